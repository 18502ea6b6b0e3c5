"""The report and the model cards, built from a tiny but real run folder (no recipe runner needed).

The fixture does what `minitron run` does, by hand: importance with layer-loss scores, a two-candidate
search from real pruned-model losses, pruning, a few real distillation steps (metrics.jsonl), checkpoints,
evaluation, throughput, then run.json per the shared contract. Two chained stages: 01-half (search,
width cut) and 02-quarter (fixed target with a depth cut, distilled from 01-half).
"""
import base64
import copy
import html
import io
import json
import random
import re
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml
from matplotlib import image as mpimg

from minitron.cli import main
from minitron.config import DistillConfig
from minitron.data import iter_batches, token_blocks
from minitron.distill.loop import distill
from minitron.errors import MinitronError
from minitron.eval import evaluate_loss
from minitron.fingerprint import architecture_summary
from minitron.importance import estimate_importance
from minitron.loading import publish_into, save_checkpoint
from minitron.params import count_parameters
from minitron.prune import prune
from minitron.report import (
    build_report,
    load_run,
    model_card_info,
    write_model_card,
    write_model_cards,
)
from tests.tiny import tiny_model, tiny_tokenizer

SECTIONS = ["summary", "size-vs-loss", "throughput", "stages", "layer-importance", "width-importance", "search",
            "distillation", "how-made"]
WORDS = ["prune", "distill", "layer", "head", "neuron", "teacher", "student", "loss", "token", "model", "width",
         "depth", "channel", "score", "import", "torch", "return", "value", "the", "a", "of", "to", "in"]


def _corpus(path):
    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(160)]
    path.write_text("\n\n".join(documents))
    return str(path)


def _config(steps: int, eval_every: int = 0) -> DistillConfig:
    return DistillConfig(seq_len=16, micro_batch_size=4, steps=steps, lr=3e-3, warmup_steps=1, eval_every=eval_every,
                         eval_samples=4, save_every=0, chunk_size=32, precision="fp32")


def _throughput(model) -> dict:
    try:
        from minitron.speed import measure_throughput
        speed = measure_throughput(model, batch_size=1, seq_len=16, new_tokens=4, repeats=1)
        return {"prefill": speed["prefill_tokens_per_s"], "decode": speed["decode_tokens_per_s"]}
    except ImportError:  # the speed module is built in parallel; time a prefill and a few decode steps here
        ids = torch.randint(0, model.config.vocab_size, (1, 16))
        with torch.no_grad():
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(3):
                out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values,
                            use_cache=True)
            decode = time.perf_counter() - start
        return {"prefill": 16 / prefill, "decode": 3 / decode}


def _member(name, model, spec, heldout) -> dict:
    result = evaluate_loss(model.eval(), heldout, batch_size=4)
    return {"name": name, "model": spec, "params": count_parameters(model).as_dict(), "heldout_loss": result["loss"],
            "perplexity": result["perplexity"], "tokens_per_s": _throughput(model),
            "architecture": {k: v for k, v in architecture_summary(model.config).items()
                             if k not in ("model_type", "vocab_size", "head_dim")}}


def _distill_into(student, teacher, teacher_spec, train, heldout, out, tokenizer, history, data, steps=4):
    config = _config(steps, eval_every=2)
    trained = distill(student, teacher, train, heldout, config, out=out)
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    record = {"stage": "distill", "student": str(out.parent / "pruned"), "teacher": teacher_spec, "data": data,
              "config": asdict(config), "final": final}
    publish_into(trained, tokenizer, out, {**record, "history": [*history, record]})
    return trained.eval()


def _own_weights(model):
    # prune() hands back uncut tensors shared with its source: training the student in this process
    # would change the teacher too. A copy keeps the teacher fixed, as a run from saved folders does.
    return copy.deepcopy(model)


def _search(teacher, scores, train, heldout, targets) -> tuple[dict, dict]:
    candidates = []
    for target in targets:
        pruned = prune(teacher, scores, target)
        loss_pruned = evaluate_loss(pruned, heldout, 4)["loss"]
        briefly = distill(copy.deepcopy(pruned), teacher, train, heldout, _config(2))
        candidates.append({"target": target, "architecture": architecture_summary(pruned.config),
                           "params": count_parameters(pruned).as_dict(), "latency_ms": None,
                           "loss_pruned": loss_pruned, "loss_distilled": evaluate_loss(briefly, heldout, 4)["loss"]})
    for key in ("pruned", "distilled"):
        for rank, candidate in enumerate(sorted(candidates, key=lambda c: c[f"loss_{key}"]), 1):
            candidate[f"rank_{key}"] = rank
    winner = min(candidates, key=lambda c: c["loss_distilled"])
    for candidate in candidates:
        candidate["chosen"] = candidate is winner
    ranking_changed = [c["rank_pruned"] for c in candidates] != [c["rank_distilled"] for c in candidates]
    return {"config": {"target_params": 0.6}, "budget": {"params_total": int(0.75 * count_parameters(teacher).total)},
            "candidates": candidates, "winner": winner, "ranking_changed": ranking_changed}, winner


def _stage(name, parent, teacher, target, search: bool) -> dict:
    # As the recipe runner records it: paths relative to the run, the parent as shown to the user.
    return {"name": name, "kind": "prune_distill", "status": "done", "fingerprint": name, "dir": name,
            "parent": parent, "teacher": teacher, "target": target,
            "search": f"{name}/search/search.json" if search else None, "scores": f"{name}/scores",
            "pruned": f"{name}/pruned", "model": f"{name}/model", "seconds": 1.5}


def _prune_and_save(parent, parent_spec, scores, target, folder, tokenizer):
    """prune + a pruned/ checkpoint whose minitron.json holds only this step (as `minitron prune` writes)."""
    pruned = _own_weights(prune(parent, scores, target))
    record = {"stage": "prune", "source": parent_spec, "scores": str(folder / "scores"), "target": target,
              "kept_layers": pruned.minitron_kept_layers, "params_after": count_parameters(pruned).as_dict()}
    save_checkpoint(pruned, tokenizer, folder / "pruned", record)
    return pruned, record


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread, and do not fight over shared cores
    try:
        return _build_run(tmp_path_factory.mktemp("report"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return build_report(run_dir).read_text()


def _build_run(base):
    torch.manual_seed(0)
    run, tokenizer, teacher = base / "run", tiny_tokenizer(), tiny_model("llama")
    data = _corpus(base / "corpus.txt")
    train = token_blocks(data, tokenizer, 16, 48, split="train", allow_fewer=True)
    heldout = token_blocks(data, tokenizer, 16, 8, split="heldout", allow_fewer=True)
    teacher_dir = str(save_checkpoint(teacher, tokenizer, base / "teacher", {"stage": "teacher", "description": "tiny random llama"}))
    batches = list(iter_batches(train[:16], 4))

    # Stage 1: scores (with the architecture in their meta), a two-candidate search, the winner distilled.
    folder = run / "01-half"
    scores = estimate_importance(teacher, batches, layer_loss_batches=2, progress=False,
                                 meta={"data": data, "seq_len": 16, "architecture": architecture_summary(teacher.config)})
    scores.save(folder / "scores")
    result, winner = _search(teacher, scores, train, heldout,
                             [{"intermediate_size": 32, "num_attention_heads": 4}, {"hidden_size": 36}])
    (folder / "search").mkdir()
    (folder / "search" / "search.json").write_text(json.dumps(result))
    pruned, record = _prune_and_save(teacher, teacher_dir, scores, winner["target"], folder, tokenizer)
    first = _distill_into(pruned, teacher, teacher_dir, train, heldout, folder / "model", tokenizer, [record], data)

    # Stage 2, from stage 1's student, a depth cut: scores without architecture meta (the report reads the
    # parent's config.json instead), distilled from its parent.
    folder, parent_spec = run / "02-quarter", str(run / "01-half" / "model")
    scores = estimate_importance(first, batches, layer_loss_batches=2, progress=False)
    scores.save(folder / "scores")
    target = {"num_hidden_layers": 3, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1}
    pruned, record = _prune_and_save(first, parent_spec, scores, target, folder, tokenizer)
    second = _distill_into(pruned, first, parent_spec, train, heldout, folder / "model", tokenizer, [record], data)

    recipe = {"name": "tiny-family", "teacher": teacher_dir,
              "stages": [{"name": "half", "search": {"target_params": 0.75}}, {"name": "quarter", "target": target}]}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    members = [_member("teacher", teacher, teacher_dir, heldout), _member("01-half", first, "01-half/model", heldout),
               _member("02-quarter", second, "02-quarter/model", heldout)]
    stages = [_stage("01-half", teacher_dir, teacher_dir, winner["target"], True),
              _stage("02-quarter", "01-half/model", "01-half/model", target, False)]
    state = {"recipe": recipe, "teacher": teacher_dir, "stages": stages, "members": members,
             "data": {"train": data, "eval": None, "seq_len": 16, "text_field": "text"}}
    (run / "run.json").write_text(json.dumps(state, indent=2))
    return run


def _images(page: str) -> list[tuple[bytes, int]]:
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*data-points="(\d+)"', page)
    return [(base64.b64decode(data, validate=True), int(points)) for data, points in found]


def test_report_is_self_contained_and_every_plot_has_data(run_dir, page):
    assert (run_dir / "report.html").read_text() == page
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page), "the report must not load external assets"
    assert "<script" not in page and "<link" not in page
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
    assert "not part of this run" not in page  # this run did every part
    assert load_run(run_dir).teacher in page and "tiny-family" in page
    images = _images(page)
    # size-vs-loss, throughput, search, and per stage: layer importance, heatmaps, distillation curves.
    assert len(images) == page.count("<img ") == 3 + 3 * 2
    for png, points in images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024
        assert points > 0
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert float(np.asarray(pixels)[..., :3].std()) > 0.02  # not a blank canvas
    assert page.count('class="chosen"') == 1  # the search winner is highlighted
    # 01-half cut width only; 02-quarter dropped one layer (kept_layers in its pruned/minitron.json).
    assert "This stage kept every layer" in page and page.count("This stage dropped layers ") == 1


def test_report_numbers_match_run_json(run_dir, page):
    for member in load_run(run_dir).members:
        assert f"{member['heldout_loss']:.4f}" in page
        assert f"{member['tokens_per_s']['decode']:,.0f}" in page
    search = json.loads((run_dir / "01-half" / "search" / "search.json").read_text())
    for candidate in search["candidates"]:
        assert f"{candidate['loss_pruned']:.4f} ({candidate['rank_pruned']})" in page
    # This hand-made run.json's recipe is no valid recipe (it has a "name"): the report prints no command
    # that would not redo the run, and says why (tests/test_reproduce.py runs the commands of a real run).
    assert "No command can reproduce this run: unknown key &#x27;name&#x27; in the recipe in run.json" in page
    assert "minitron prune" not in page and "minitron distill" not in page


def test_parts_a_run_did_not_do_say_so(run_dir, tmp_path):
    state = json.loads((run_dir / "run.json").read_text())
    stage = {**state["stages"][1], "search": None}
    for key in ("scores", "pruned", "model"):
        stage[key] = str(run_dir / stage[key])  # absolute paths: this run.json lives in another folder
    pending = {"name": "03-tiny", "kind": "prune_distill", "status": "pending", "dir": "03-tiny", "parent": None,
               "target": None, "search": None, "scores": None, "pruned": None, "model": "03-tiny/model"}
    members = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in state["members"]]
    (tmp_path / "run.json").write_text(json.dumps({**state, "stages": [stage, pending], "members": members}))
    page = build_report(tmp_path).read_text()
    assert "Architecture search was not part of this run" in page
    assert "Throughput was not part of this run" in page
    assert "recipe.yaml is missing" not in page  # the recipe comes from run.json when the copy is absent
    assert "03-tiny" in page and "pending" in page
    images = _images(page)
    assert len(images) == 4 and all(points > 0 for _, points in images)  # size-vs-loss + the stage's three


@pytest.mark.parametrize("content, message", [
    (None, "no run.json"), ("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
    ('{"teacher": "t", "stages": {}}', "\"stages\" list"), ('{"stages": []}', "teacher"),
    ('{"teacher": "t", "stages": [{"dir": "x"}]}', "stage 0"),
])
def test_a_missing_or_malformed_run_json_is_refused(tmp_path, content, message):
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    with pytest.raises(MinitronError, match=message):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_report(run_dir, tmp_path, capsys):
    state = json.loads((run_dir / "run.json").read_text())
    stage = {**state["stages"][0], "model": str(run_dir / state["stages"][0]["model"]), "scores": None,
             "search": None, "pruned": None}
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "run.json").write_text(json.dumps({**state, "stages": [stage], "members": state["members"][:2]}))
    assert main(["report", str(good)]) == 0
    output = capsys.readouterr().out
    assert str(good / "report.html") in output and "1 model card(s)" in output
    assert (run_dir / "01-half" / "model" / "README.md").is_file()
    assert main(["report", str(bad)]) == 2
    assert "no run.json" in capsys.readouterr().err


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card(run_dir):
    run = load_run(run_dir)
    stage = run.stages[1]
    info = {**model_card_info(run, stage), "base_model": "HuggingFaceTB/SmolLM2-135M"}
    path = write_model_card(run_dir / "02-quarter" / "model", info)
    text = path.read_text()
    front = _front_matter(text)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M" and front["library_name"] == "transformers"
    assert front["pipeline_tag"] == "text-generation" and set(front["tags"]) >= {"minitron", "pruning", "distillation"}
    member, teacher = run.member("02-quarter"), run.member("teacher")
    assert f"{member['heldout_loss']:.4f}" in text and f"{teacher['heldout_loss']:.4f}" in text
    assert f"{member['tokens_per_s']['prefill']:,.0f}" in text
    for heading in ("## How it was made", "## How good it is", "## How to use", "## Limitations"):
        assert heading in text
    assert "AutoModelForCausalLM.from_pretrained" in text
    assert "## How to reproduce\n\nNo command can reproduce this model: unknown key 'name'" in text
    assert text.count("**prune**") == 2 and text.count("**distill**") == 2  # the chain's full history
    assert "num_hidden_layers=3" in text
    tokens = json.loads((run_dir / "02-quarter" / "model" / "metrics.jsonl").read_text().splitlines()[-1])["tokens"]
    assert f"{tokens} tokens" in text or f"{tokens / 1e3:.1f}K tokens" in text


def test_model_cards_for_every_finished_stage(run_dir):
    written = write_model_cards(run_dir)
    assert [p.parent.parent.name for p in written] == ["01-half", "02-quarter"]
    first = written[0].read_text()
    assert "Architecture search:** 2 candidates" in first
    assert "base_model" not in _front_matter(first)  # a local teacher folder is no hub id
    assert _front_matter(first)["license"] == "other"  # ... whose card (it has none) names no license


def test_model_cards_carry_the_license_and_base_model_of_their_source(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    front = _front_matter(write_model_card(folder, {"name": "m", "teacher": "builtin:smollm2-135m"}).read_text())
    assert front["license"] == "apache-2.0" and front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["library_name"] == "transformers" and "minitron" in front["tags"]
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n# a teacher\n")
    front = _front_matter(write_model_card(folder, {"name": "m", "teacher": str(teacher)}).read_text())
    assert front["license"] == "mit" and "base_model" not in front  # a folder is no hub id; its license carries


def _page_width(css: str) -> tuple[float, float]:
    """(the widest main column, its content width) in px, read from the report's CSS."""
    main = re.search(r"main \{ max-width: (\d+)px; margin: 0 auto; padding: 0 (\d+)px", css)
    return float(main[1]), float(main[1]) - 2 * float(main[2])


def _min_table_width(page: str, css: str) -> float:
    """A lower bound on what the browser needs for a table, in px: per column its widest unbreakable text
    at 0.6 em a glyph (a proportional sans font runs 0.5-0.6 em), plus the cell padding. Cells don't wrap;
    headers do where the CSS lets them."""
    font = float(re.search(r"table \{[^}]*font-size: ([\d.]+)px", css)[1])
    padding = float(re.search(r"th, td \{ padding: \d+px (\d+)px", css)[1])
    headers_wrap = re.search(r"\bth \{[^}]*white-space: normal", css) is not None
    heads = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", page)]
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page.split("<tbody>")[1])]
    widths = []
    for column, head in enumerate(heads):
        head_chars = max(map(len, head.split())) if headers_wrap else len(head)
        cell_chars = max(len(html.unescape(row[column])) for row in rows)
        widths.append(max(head_chars, cell_chars) * 0.6 * font + 2 * padding + (17 if column == 0 else 0))
    return sum(widths)


def test_the_family_table_fits_a_1400_pixel_page(tmp_path):
    from minitron.report import family
    from minitron.report.html import CSS
    from minitron.report.runfolder import Run
    arch = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
            "num_hidden_layers": 30}
    members = [{"name": name, "architecture": arch, "params": {"total": 134_515_008, "non_embedding": 106_203_456},
                "heldout_loss": 3.1234, "perplexity": 22.73, "tokens_per_s": {"prefill": 12_345.6, "decode": 1_234.5}}
               for name in ("teacher", "00-correction", "01-70pct-searched", "02-50pct-searched")]
    table = family.summary(Run(tmp_path, {"members": members, "stages": []}))
    widest, content = _page_width(CSS)
    assert widest <= 1400 - 2 * 16  # the page's own margins and a scroll bar
    assert _min_table_width(table, CSS) <= content  # so no column hides behind a horizontal scroll


def test_a_chart_of_one_candidate_has_integer_axes(monkeypatch):
    from minitron.report import plots
    drawn = []
    render = plots._render
    monkeypatch.setattr(plots, "_render", lambda figure, points: (drawn.append(figure), render(figure, points))[1])

    def visible_ticks(axis):
        low, high = sorted(axis.get_view_interval())
        return [tick for tick in axis.get_ticklocs() if low <= tick <= high]

    plots.search_losses([{"loss_pruned": 3.2, "loss_distilled": 2.9, "label": "H32", "chosen": True}], "#07b")
    ranks = drawn[-1].axes[1]
    assert visible_ticks(ranks.yaxis) == [1]  # the one rank, not 0.95 ... 1.05
    plots.distillation_curves([{"step": 1, "loss": 3.0, "val_student_loss": 3.1}, {"step": 2, "loss": 2.9},
                               {"step": 3, "loss": 2.8, "val_student_loss": 2.7}], "#07b")
    for axis in drawn[-1].axes:
        steps = visible_ticks(axis.xaxis)
        assert steps and all(float(step).is_integer() for step in steps), steps  # no half steps


def test_plots_count_only_what_they_draw():
    from minitron.report import plots
    assert plots.params_vs_loss([("teacher", 1e6, 2.0, "#333"), ("a", 5e5, 2.4, "#07b")]).points == 2
    assert plots.throughput_bars(["t", "a"], [100.0, 180.0], [10.0, None], ["#333", "#07b"]).points == 3
    assert plots.layer_importance({"block_influence": [0.1, 0.3, 0.2], "lm_loss": [1.0, 0.5, 2.0]}, [1],
                                  "#07b").points == 6
    heatmaps = plots.neuron_head_heatmaps([[3.0, 1.0, 2.0, 0.5]] * 2, [[1.0, 0.2]] * 2, 2, {0: [0]}, [1])
    assert heatmaps.points == 2 * 4 + 2 * 2
    candidates = [{"loss_pruned": 3.0, "loss_distilled": 2.5, "chosen": True},
                  {"loss_pruned": 2.9, "loss_distilled": 2.6}, {"loss_pruned": 3.5, "loss_distilled": None}]
    assert plots.search_losses(candidates, "#07b").points == 4  # the undistilled candidate is on neither panel
    records = [{"step": 1, "tokens": 64, "loss": 1.0}, {"step": 2, "tokens": 128, "loss": 0.8,
               "val_student_loss": 3.0, "val_teacher_loss": 2.0}]
    assert plots.distillation_curves(records, "#07b").points == 2 + 1 + 1
