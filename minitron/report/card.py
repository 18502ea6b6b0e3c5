"""Model cards: a Hugging Face README.md (YAML front matter + Markdown) for every model a run publishes.

    from minitron.report import write_model_card, write_model_cards
    write_model_card("runs/family/01-70pct/model", {"name": "01-70pct", "teacher": "HuggingFaceTB/SmolLM2-135M"})
    write_model_cards("runs/family")     # every finished stage of a run, info taken from run.json

`info` keys (all optional but `name`): teacher, parent, distilled_from, base_model (hub id for the front matter; derived
from the teacher when absent), license (default: the teacher's, see source_license), kind, target, search
(search.json), importance (the scores' meta), data, member and teacher_member (run.json member entries), repo_id
(shown in the loading snippet), commands (the shell lines that reproduce the model, or a sentence saying why none
can). The card
also reads the folder's minitron.json (the full history) and metrics.jsonl (distillation tokens).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..io import atomic_write_text
from .commands import NotReproducible, reproduce_commands
from .markup import human
from .runfolder import (
    Run,
    arch_label,
    data_spec,
    load_run,
    number,
    read_json,
    read_metrics,
    throughput,
)
from .stages import budget_description

CARD_FILE = "README.md"
# Built-in teachers are GGUF files of hub models; the card links the hub model they came from.
BUILTIN_HUB_IDS = {"builtin:smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
BUILTIN_LICENSES = {"builtin:smollm2-135m": "apache-2.0"}  # SmolLM2's model card
UNKNOWN_LICENSE = "other"  # the Hub's value for a license it has no id for
TAGS = ["minitron", "pruning", "distillation"]


def write_model_card(model_dir: str | Path, info: dict) -> Path:
    """Write `model_dir`/README.md: how the model was made, how good it is, how to load it, its limits."""
    model_dir = Path(model_dir)
    history = full_history(model_dir)
    front = {"license": info.get("license") or source_license(info.get("teacher")), "library_name": "transformers",
             "pipeline_tag": "text-generation", "tags": TAGS}
    base_model = info.get("base_model") or hub_id(info.get("teacher"))
    if base_model:
        front = {"base_model": base_model, **front}
    parts = [f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n", _intro(info),
             _how_made(info, history, read_metrics(model_dir)), _how_good(info),
             _how_to_load(info.get("repo_id") or str(model_dir)), _how_to_reproduce(info.get("commands")),
             _limitations(info)]
    path = model_dir / CARD_FILE
    atomic_write_text(path, "\n".join(parts))
    return path


def full_history(model_dir: Path, depth: int = 16) -> list[dict]:
    """The model's minitron.json history, preceded by its source's when that folder has one: a pruned
    model records only its own steps, and the rest of a chain lives in its parents' folders."""
    record = read_json(model_dir / "minitron.json") or {}
    history = [r for r in record.get("history") or ([record] if record else []) if isinstance(r, dict)]
    source = (history[0].get("source") or history[0].get("student")) if history else None
    if depth == 0 or not isinstance(source, str) or not Path(source).is_dir() or Path(source) == model_dir:
        return history
    earlier = full_history(Path(source), depth - 1)
    if earlier and history[:len(earlier)] != earlier:
        history = earlier + history
    return history


def hub_id(spec) -> str | None:
    """The hub id a model spec stands for, or None for local folders and files (not valid as base_model)."""
    if not isinstance(spec, str) or not spec:
        return None
    if spec in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[spec]
    looks_like_hub = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith(".gguf")
    return spec if looks_like_hub and not Path(spec).exists() else None


def source_license(spec) -> str:
    """The license of the model a spec names, which a derived model inherits: from its model card (a local
    folder's README.md, or a hub model's card already in the local cache; nothing is downloaded), the
    built-in teacher's known license, else "other"."""
    if not isinstance(spec, str) or not spec:
        return UNKNOWN_LICENSE
    if spec in BUILTIN_LICENSES:
        return BUILTIN_LICENSES[spec]
    card = Path(spec) / CARD_FILE
    if not card.is_file() and hub_id(spec):
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(spec, CARD_FILE)
        card = Path(cached) if isinstance(cached, str) else card
    try:
        from huggingface_hub.repocard import metadata_load
        license_id = (metadata_load(card) or {}).get("license") if card.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):  # an unreadable card says nothing about the license
        license_id = None
    return license_id if isinstance(license_id, str) and license_id else UNKNOWN_LICENSE


def _params(member) -> dict:
    params = (member or {}).get("params")
    return params if isinstance(params, dict) else {}


def _intro(info: dict) -> str:
    name, teacher = info.get("name", "model"), info.get("teacher", "its teacher")
    member, teacher_member = info.get("member"), info.get("teacher_member")
    size = ""
    total, whole = number(_params(member).get("total")), number(_params(teacher_member).get("total"))
    if total is not None:
        share = f", {total / whole:.0%} of the teacher" if whole else ""
        size = f" It has {human(total)} parameters{share}."
    made = {"correction": "the teacher after correction (light next-token fine-tuning on the distillation data)",
            "prune": f"a pruned version of `{teacher}`, not retrained yet (distill it before use)",
            "finetune": f"a fine-tuned version of `{teacher}` (next-token loss)",
            }.get(info.get("kind"), f"a pruned and distilled version of `{teacher}`")
    return (f"# {name}\n\n`{name}` is {made}, made with minitron (Minitron structured "
            f"pruning and knowledge distillation for Hugging Face models).{size} It loads with plain "
            "`transformers`, no custom code.\n")


def _how_made(info: dict, history: list, metrics: list[dict]) -> str:
    lines = ["## How it was made\n", f"- **Teacher:** `{info.get('teacher', 'unknown')}`"]
    if info.get("parent"):
        lines.append(f"- **Started from:** `{info['parent']}`")
    if info.get("distilled_from"):
        lines.append(f"- **Distilled from:** `{info['distilled_from']}`")
    if info.get("target"):
        lines.append(f"- **Pruning target:** {_pairs(info['target'])}")
    lines += _search_lines(info.get("search"))
    importance = info.get("importance")
    keys = [k for k in ("data", "seq_len", "samples", "model") if (importance or {}).get(k) is not None]
    if keys:
        lines.append("- **Importance estimated on:** " + _pairs({k: importance[k] for k in keys}))
    lines += _distill_lines(history, metrics)
    architecture = (info.get("member") or {}).get("architecture")
    if architecture:
        lines.append(f"- **Architecture:** {arch_label(architecture)}")
    lines.append("\n### Full history\n")
    lines += [f"{i}. {_history_line(r)}" for i, r in enumerate(history, 1) if isinstance(r, dict)] or [
        "No minitron.json history was found in this folder."]
    return "\n".join(lines) + "\n"


def _search_lines(result) -> list[str]:
    if not isinstance(result, dict):
        return []
    winner = result.get("winner") or {}
    candidates = result.get("candidates") or []
    changed = result.get("ranking_changed")
    flip = {True: "; short distillation changed the ranking", False: "; short distillation kept the ranking"}
    chosen = arch_label(winner.get("architecture") or winner.get("target"))
    budget = budget_description(result.get("budget"))
    line = (f"- **Architecture search:** {len(candidates)} candidates met the budget ({budget}); "
            f"chose {chosen}{flip.get(changed, '')}")
    return [line]


def _distill_lines(history: list, metrics: list[dict]) -> list[str]:
    trained = [r for r in history if isinstance(r, dict) and r.get("stage") in ("distill", "finetune")]
    if not trained and not metrics:
        return []
    record = trained[-1] if trained else {}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    tokens = metrics[-1].get("tokens") if metrics else config.get("tokens")
    loss = {"forward_kl": "forward KL on logits", "ce": "next-token cross entropy"}.get(config.get("loss"),
                                                                                        config.get("loss"))
    facts = [f"{human(number(tokens))} tokens" if number(tokens) else None,
             f"{metrics[-1]['step']} steps" if metrics else None, f"loss: {loss}" if loss else None,
             f"peak LR {config['lr']}" if config.get("lr") is not None else None,
             f"data `{record['data']}`" if record.get("data") else None]
    label = "Fine-tuning" if record.get("stage") == "finetune" else "Distillation"
    return [f"- **{label}:** " + ", ".join(f for f in facts if f)]


def _history_line(record: dict) -> str:
    kind = record.get("stage", "step")
    if kind == "prune":
        params = record.get("params_after") or {}
        scores = f"scores: `{record['scores']}`; " if record.get("scores") else ""
        return (f"**prune** `{record.get('source', '?')}` to {_pairs(record.get('target') or {})} "
                f"({scores}kept layers {record.get('kept_layers')}; {human(number(params.get('total')))} parameters)")
    if kind in ("distill", "finetune"):
        config = record.get("config") or {}
        final = record.get("final") or {}
        budget = f"{config['tokens']} tokens" if config.get("tokens") else f"{config.get('steps')} steps"
        val = number(final.get("val_student_loss"))
        return (f"**{kind}** from `{record.get('teacher') or record.get('student')}` on `{record.get('data', '?')}`: "
                f"{budget}, loss {config.get('loss', '?')}" + (f", final held-out loss {val:.4f}" if val else ""))
    scalars = {k: v for k, v in record.items() if k != "stage" and isinstance(v, (str, int, float, bool))}
    return f"**{kind}** {_pairs(scalars)}".rstrip()


def _pairs(mapping) -> str:
    if not isinstance(mapping, dict):
        return str(mapping)
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


def _how_good(info: dict) -> str:
    member, teacher = info.get("member") or {}, info.get("teacher_member") or {}
    if not member:
        return "## How good it is\n\nThis model has not been evaluated yet.\n"
    rows = [("parameters (total)", *(human(number(_params(m).get("total"))) for m in (member, teacher))),
            ("parameters (non-embedding)", *(human(number(_params(m).get("non_embedding"))) for m in (member, teacher))),
            ("held-out loss", *(_num(m.get("heldout_loss"), 4) for m in (member, teacher))),
            ("perplexity", *(_num(m.get("perplexity"), 2) for m in (member, teacher))),
            ("prefill tokens/s", *(_num(throughput(m)[0], 0) for m in (member, teacher))),
            ("decode tokens/s", *(_num(throughput(m)[1], 0) for m in (member, teacher)))]
    table = ["| | this model | teacher |", "|---|---:|---:|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    data = data_spec(info.get("data"), heldout=True)
    where = f" from `{data}`" if data else ""
    return ("## How good it is\n\n" + "\n".join(table) + f"\n\nHeld-out loss is the mean next-token loss (nats per "
            f"token) on text{where} held out from calibration and distillation; throughput was measured on the "
            "device the run used. A dash means the run did not measure it.\n")


def _num(value, digits: int) -> str:
    value = number(value)
    return "—" if value is None else f"{value:,.{digits}f}"


def _how_to_load(where: str) -> str:
    return ("## How to use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({where!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
            "inputs = tokenizer(\"def fibonacci(n):\", return_tensors=\"pt\")\n"
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))\n```\n")


def _how_to_reproduce(commands) -> str:
    if not commands:
        return ""
    if isinstance(commands, str):
        return f"## How to reproduce\n\n{commands}\n"
    return "## How to reproduce\n\n```bash\n" + "\n".join(commands) + "\n```\n"


def _limitations(info: dict) -> str:
    return ("## Limitations\n\n"
            f"- It inherits the teacher's (`{info.get('teacher', 'unknown')}`) licence, biases and failure modes; "
            "pruning and short distillation lose some of its knowledge, most of all outside the distillation data.\n"
            "- Quality is reported as held-out loss on the run's own data only; no downstream benchmark was run "
            "unless the history above says so. Evaluate on your task before use.\n"
            "- Throughput numbers hold for the device, batch and sequence length of the run.\n")


def model_card_info(run: Run, stage: dict) -> dict:
    """The `info` of one stage's model, from run.json and the files it names."""
    member = run.stage_member(stage)
    scores = read_json(run.path(stage.get("scores")) / "scores.json") if stage.get("scores") else None
    return {"name": stage["name"], "teacher": run.teacher, "parent": stage.get("parent"), "kind": stage.get("kind"),
            "target": stage.get("target"), "search": read_json(run.path(stage.get("search"))),
            "distilled_from": stage.get("teacher"), "importance": scores, "data": run.data.get("data"),
            "member": member, "teacher_member": run.member("teacher"), "commands": _commands(run, stage)}


def _commands(run: Run, stage: dict) -> list[str] | str:
    """The run's commands up to this stage (the chain that made this model)."""
    try:
        return reproduce_commands(run, until=stage.get("dir"))
    except NotReproducible as error:
        return f"No command can reproduce this model: {error}."


def write_model_cards(run_dir: str | Path) -> list[Path]:
    """A card for the model of every finished stage of a run."""
    run = load_run(run_dir)
    written = []
    for stage in run.stages:
        model_dir = run.path(stage.get("model"))
        if stage.get("status") == "done" and model_dir is not None and (model_dir / "config.json").is_file():
            written.append(write_model_card(model_dir, model_card_info(run, stage)))
    return written
