"""File-level entry points: typed functions that the CLI calls one-to-one (and Python users may too).

    from minitron.jobs import run_importance, run_prune
    run_importance("builtin:smollm2-135m", "scores/", DataConfig(samples=64, seq_len=256))
    run_prune("builtin:smollm2-135m", "pruned/", {"hidden_size": 384}, scores="scores/")
"""
from __future__ import annotations

import time
from pathlib import Path

from transformers import AutoConfig

from .arch import get_adapter
from .config import DataConfig, ImportanceConfig
from .data import iter_batches
from .data.cache import load_blocks
from .errors import MinitronError, ModelLoadError, SettingsError
from .eval import evaluate_loss
from .fingerprint import architecture_summary
from .importance import ImportanceScores, estimate_importance, magnitude_scores, random_scores
from .loading import check_output_folder, load_model, locate_model, save_checkpoint
from .outputs import require_text
from .params import count_parameters, count_parameters_from_config
from .prune import describe_pruning, prune, resolve_target


def compute_scores(model, tokenizer, data: DataConfig, settings: ImportanceConfig,
                   progress: bool = True) -> ImportanceScores:
    if settings.criterion == "magnitude":
        return magnitude_scores(model)
    if settings.criterion == "random":
        return random_scores(model, settings.seed)
    blocks = load_blocks(data.data, tokenizer, data.seq_len, data.samples, split="train",
                         text_field=data.text_field)
    layer_loss_batches = -(-settings.layer_loss_samples // data.batch_size)
    return estimate_importance(
        model, list(iter_batches(blocks, data.batch_size)), seq_reduction=settings.seq_reduction,
        batch_reduction=settings.batch_reduction, layer_loss_batches=layer_loss_batches, progress=progress,
        meta={"model": model.config._name_or_path, "data": data.data, "seq_len": data.seq_len})


def run_importance(model: str, out: str, data: DataConfig | None = None,
                   settings: ImportanceConfig | None = None, *, dtype: str | None = None,
                   device: str | None = None, overwrite: bool = False) -> Path:
    """Estimate importance on calibration data and save the scores folder `out`."""
    data, settings = data or DataConfig(), settings or ImportanceConfig()
    require_text(model, "--model")
    check_output_folder(out, overwrite, inputs=[model, data.data])
    loaded, tokenizer = load_model(model, dtype=dtype, device=device)
    get_adapter(loaded)  # importance reads family-specific modules: "not supported yet" before any work
    start = time.perf_counter()
    scores = compute_scores(loaded, tokenizer, data, settings)
    scores.meta["seconds"] = round(time.perf_counter() - start, 2)
    scores.meta["architecture"] = architecture_summary(loaded.config)
    return scores.save(out)


def run_prune(model: str, out: str | None, target: dict, *, scores: str | None = None,
              criterion: str | None = None, depth_metric: str | None = None, expert_metric: str | None = None,
              dry_run: bool = False,
              dtype: str | None = None, device: str | None = None, overwrite: bool = False,
              save_dtype: str | None = None) -> dict:
    """Prune `model` to `target` with saved `scores` (or a baseline `criterion`) and save it to `out`.

    With dry_run, print-ready sizes and parameter counts come from the config alone; nothing is written.
    The pruned model is saved in `save_dtype`, by default the source checkpoint's dtype.
    """
    if dry_run:
        return describe_pruning(load_config(model), target)
    if out is None:
        raise SettingsError("--out is required (or pass --dry-run)")
    require_text(model, "--model")
    if scores is not None:
        require_text(scores, "--scores")
    check_output_folder(out, overwrite, inputs=[model, scores])
    if scores is None and criterion not in ("magnitude", "random"):
        raise SettingsError("pass --scores DIR (from `minitron importance`) or --criterion magnitude|random")
    loaded_scores = ImportanceScores.load(scores) if scores else None
    loaded, tokenizer = load_model(model, dtype=dtype, device=device)
    get_adapter(loaded)
    resolve_target(loaded.config, target)  # refuse impossible targets before computing anything
    if loaded_scores is None:
        loaded_scores = compute_scores(loaded, tokenizer, DataConfig(), ImportanceConfig(criterion=criterion))
    pruned = prune(loaded, loaded_scores, target, depth_metric=depth_metric, expert_metric=expert_metric)
    record = {
        "source": model, "scores": scores or criterion, "scores_meta": loaded_scores.meta,
        "target": target, "depth_metric": depth_metric, "expert_metric": expert_metric, "kept_layers": pruned.minitron_kept_layers,
        "params_before": count_parameters(loaded).as_dict(), "params_after": count_parameters(pruned).as_dict(),
    }
    save_checkpoint(pruned, tokenizer, out, {"stage": "prune", **record}, save_dtype=save_dtype)
    return record


def load_config(spec: str):
    """A model's config without its weights where possible (folders and hub ids); GGUF needs a load.

    Any causal LM's config is read; callers that need a family adapter ask for it.
    """
    path = Path(require_text(spec, "the model spec"))
    if path.is_file() and path.name == "config.json":
        spec = str(path.parent)
    if spec.startswith("builtin:") or spec.endswith(".gguf"):
        return load_model(spec)[0].config
    location, _ = locate_model(spec)  # a missing folder fails at once, without asking the Hub
    try:
        return AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the config of {spec!r}: {error}") from error


AXES = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
        "head_dim", "num_hidden_layers")


def inspect_model(model: str) -> dict:
    """Parameter counts (total, embedding, non-embedding) and the size of every prunable axis."""
    config = load_config(model)
    counts = count_parameters_from_config(config)
    sizes = {axis: getattr(config, axis, None) for axis in AXES}
    if sizes["head_dim"] is None:
        sizes["head_dim"] = config.hidden_size // config.num_attention_heads
    return {"model": model, "model_type": config.model_type, "tie_word_embeddings":
            bool(getattr(config, "tie_word_embeddings", False)), **sizes, "params": counts.as_dict()}


def run_eval(model: str, data: DataConfig | None = None, split: str = "heldout", *,
             dtype: str | None = None, device: str | None = None) -> dict:
    """Held-out loss, perplexity and token count of `model` on `data`."""
    data = data or DataConfig(samples=64, seq_len=512)
    loaded, tokenizer = load_model(model, dtype=dtype, device=device)
    blocks = load_blocks(data.data, tokenizer, data.seq_len, data.samples, split=split,
                         text_field=data.text_field)
    return {"model": model, "data": data.data, "split": split,
            **evaluate_loss(loaded, blocks, data.batch_size, progress=True)}


def run_lm_eval(model: str, tasks: str, *, batch_size: int = 8, limit: int | None = None,
                device: str | None = None) -> dict:
    """Downstream tasks through the lm-eval harness (optional extra: pip install 'minitron[eval]')."""
    try:
        import lm_eval
    except ImportError as error:
        raise MinitronError("--tasks needs the lm-eval harness: pip install 'lm-eval>=0.4' "
                            "(or pip install 'minitron[eval]')") from error
    if not Path(model).is_dir():
        raise MinitronError("--tasks evaluates a saved model folder (lm-eval loads it with from_pretrained); "
                            f"{model!r} is not a folder")
    from .loading import resolve_device
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model},dtype=float32", tasks=[t for t in tasks.split(",") if t],
        batch_size=batch_size, limit=limit, device=str(resolve_device(device)))
    return {"model": model, "tasks": results.get("results", {})}
