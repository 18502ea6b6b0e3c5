"""What each recipe stage does: teacher correction, prune + distill, and the evaluation of a family member.

Every step writes its output atomically into the stage's folder and is skipped when that output is
already there, so an interrupted stage resumes at the step it was in; distillation itself resumes
from its own checkpoint (`model/checkpoint/`), exactly where it stopped.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..arch import text_config
from ..config import DistillConfig
from ..data.cache import load_blocks
from ..distill.dist import DistEnv, barrier, on_main
from ..errors import MinitronError, ScoresError
from ..eval import evaluate_loss
from ..importance import ImportanceScores
from ..jobs import forward_dtype, run_importance, run_prune
from ..loading import load_model
from ..params import count_parameters
from .schema import Recipe, Stage
from .state import say

ARCHITECTURE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "num_hidden_layers")


def run_correction(entry: dict, recipe: Recipe, run_dir: Path, *, device: str | None, env: DistEnv) -> None:
    """Teacher correction: next-token fine-tuning of the teacher on the recipe's data."""
    say(f"[{entry['dir']}] teacher correction of {recipe.teacher}")
    distill_into(recipe.teacher, None, recipe, run_dir / entry["model"], recipe.correction_config(), device, env)


def run_prune_distill(entry: dict, stage: Stage, recipe: Recipe, run_dir: Path, *, parent: str,
                      teacher: str, device: str | None, env: DistEnv, save: Callable[[], None]) -> None:
    """Importance on the parent, prune (fixed target or search winner), distill from `teacher`.

    Under torchrun every rank takes part in importance, search and distillation; rank 0 alone prunes and
    decides from the files what is left to do, and the others wait for it (on_main)."""
    stage_dir = run_dir / entry["dir"]
    scores_dir = stage_dir / "scores"
    if on_main(env, lambda: _has_scores(scores_dir)):
        say(f"[{entry['dir']}] reusing the importance scores in {scores_dir}")
    else:
        data, settings = stage.importance_configs(recipe, _task_block(stage, entry, parent))
        say(f"[{entry['dir']}] importance on {entry['parent']} ({data.samples} x {data.seq_len} tokens)")
        run_importance(parent, str(scores_dir), data, settings, device=device, overwrite=True)
        barrier(env)  # rank 0 writes the scores: the others read them only once they are there
    entry["scores"] = f"{entry['dir']}/scores"
    save()
    if stage.search is not None:
        entry["target"] = search_target(entry, stage, recipe, run_dir, parent=parent, teacher=teacher,
                                        device=device, env=env)
        entry["search"] = f"{entry['dir']}/search/search.json"
        save()
    pruned_dir = stage_dir / "pruned"
    on_main(env, lambda: _prune_once(entry, stage, parent, scores_dir, pruned_dir, device))
    entry["pruned"] = f"{entry['dir']}/pruned"
    save()
    config = stage.distill_config(recipe)
    if config.hidden_loss != "none" and teacher != parent:
        from ..jobs import load_config
        check_layer_mapping(stage.name, text_config(load_config(parent)).num_hidden_layers,
                            text_config(load_config(teacher)).num_hidden_layers)
    say(f"[{entry['dir']}] distilling from {entry['teacher']}")
    distill_into(str(pruned_dir), teacher, recipe, run_dir / entry["model"], config, device, env)


def _prune_once(entry: dict, stage: Stage, parent: str, scores_dir: Path, pruned_dir: Path, device: str | None) -> None:
    if (pruned_dir / "config.json").is_file():
        say(f"[{entry['dir']}] reusing the pruned model in {pruned_dir}")
        return
    say(f"[{entry['dir']}] pruning to {entry['target']}")
    run_prune(parent, str(pruned_dir), entry["target"], scores=str(scores_dir), depth_metric=stage.prune_depth_metric(),
              expert_metric=stage.prune_expert_metric(),
              device=device, overwrite=True)


def _task_block(stage: Stage, entry: dict, parent: str) -> int | None:
    """How many layers the stage's fixed target drops from its parent (what a task depth metric ranks)."""
    target_layers = (entry.get("target") or {}).get("num_hidden_layers")
    if target_layers is None:
        return None
    from ..jobs import load_config
    return text_config(load_config(parent)).num_hidden_layers - target_layers


def check_layer_mapping(stage_name: str, parent_layers: int, teacher_layers: int) -> None:
    """Hidden-state losses pair student and teacher layers through the stage's pruning record, whose layer
    indices are the parent's: with a teacher of another depth that pairing would be wrong, so refuse it."""
    if parent_layers != teacher_layers:
        raise MinitronError(
            f"stage {stage_name!r}: a hidden-state loss pairs its layers with the teacher's through its parent's "
            f"layer numbers, but the parent has {parent_layers} layers and the teacher {teacher_layers}. "
            "Use distill_from: parent for this stage, or hidden_loss: none")


def search_target(entry: dict, stage: Stage, recipe: Recipe, run_dir: Path, *, parent: str, teacher: str,
                  device: str | None, env: DistEnv) -> dict:
    """The winner of the stage's architecture search (reused when search.json is already there)."""
    search_dir = run_dir / entry["dir"] / "search"
    result_file = search_dir / "search.json"
    if on_main(env, result_file.is_file):
        say(f"[{entry['dir']}] reusing the search results in {result_file}")
        result = json.loads(result_file.read_text())
    else:
        from ..search import run_search
        data, _ = stage.importance_configs(recipe)
        say(f"[{entry['dir']}] searching architectures on {entry['parent']}")
        result = run_search(parent, str(search_dir), stage.search_config(), scores=str(run_dir / entry["scores"]),
                            teacher=teacher, data=data, overwrite=True, device=device)
    winner = result.get("winner")
    if not winner or not winner.get("target"):
        raise MinitronError(f"stage {stage.name!r}: the search found no architecture within its budget; "
                            f"see {search_dir} for the candidates and loosen the budget")
    return dict(winner["target"])


def distill_into(student: str, teacher: str | None, recipe: Recipe, model_dir: Path, config: DistillConfig,
                 device: str | None, env: DistEnv) -> None:
    """Train into `model_dir`: resume its checkpoint if there is one; skip if it already holds the result."""
    from ..distill.job import resumable_folder, run_distill
    resume, done = on_main(env, lambda: (resumable_folder(model_dir) is not None, _is_model(model_dir)))
    if not resume and done:
        say(f"  {model_dir} already holds the trained model")
        return
    if resume:
        say(f"  resuming the interrupted training in {model_dir}")
    run_distill(student, teacher, recipe.data.train, str(model_dir), config, text_field=recipe.data.text_field,
                chat_template=recipe.data.chat_template, resume=resume, overwrite=not resume, device=device)


def heldout_blocks(recipe: Recipe, tokenizer):
    spec = recipe.eval
    return load_blocks(recipe.data.eval_spec, tokenizer, spec.seq_len or recipe.data.seq_len, spec.samples,
                       split="heldout", text_field=recipe.data.text_field, allow_fewer=True,
                       chat_template=recipe.data.chat_template)


def evaluate_member(name: str, model_spec: str, shown: str, recipe: Recipe, heldout, *,
                    device: str | None, env: DistEnv) -> tuple[dict, object]:
    """Held-out loss, parameters, architecture and throughput of one family member.

    `heldout` may be None: the blocks are then made with this member's tokenizer and returned.
    """
    # bf16 on GPUs as `minitron eval` does; each rank scores its share of the blocks (sums all-reduced).
    model, tokenizer = load_model(model_spec, device=device, dtype=forward_dtype(None, env.device))
    if heldout is None:
        heldout = heldout_blocks(recipe, tokenizer)
    metrics = evaluate_loss(model, heldout, recipe.eval.batch_size, progress=env.is_main, env=env)
    member = {"name": name, "model": shown, "params": count_parameters(model).as_dict(),
              "heldout_loss": metrics["loss"], "perplexity": metrics["perplexity"],
              "heldout_tokens": metrics["tokens"], "tokens_per_s": None, "latency_ms": None,
              "architecture": {key: getattr(text_config(model.config), key) for key in ARCHITECTURE_KEYS}}
    member |= on_main(env, lambda: _throughput(model, recipe))  # one device's speed: measured by rank 0 alone
    return member, heldout


def _throughput(model, recipe: Recipe) -> dict:
    settings = recipe.eval.throughput
    if settings is None:
        return {}
    try:
        from ..speed import measure_throughput
    except ImportError:
        # TODO(recipe): minitron.speed comes with the search work; until then throughput is left out.
        say("  throughput skipped: minitron.speed is not available")
        return {}
    result = measure_throughput(model, settings.batch_size, settings.seq_len, new_tokens=settings.new_tokens,
                                repeats=settings.repeats)
    return {"tokens_per_s": {"prefill": result["prefill_tokens_per_s"], "decode": result["decode_tokens_per_s"]},
            "latency_ms": result.get("latency_ms")}


def _has_scores(folder: Path) -> bool:
    try:
        ImportanceScores.load(folder)
    except ScoresError:
        return False
    return True


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "minitron.json").is_file() and any(
        folder.glob("*.safetensors"))
