"""File-level entry points: typed functions that the CLI calls one-to-one (and Python users may too).

    from minitron.jobs import run_importance, run_prune
    run_importance("builtin:smollm2-135m", "scores/", DataConfig(samples=64, seq_len=256))
    run_prune("builtin:smollm2-135m", "pruned/", {"hidden_size": 384}, scores="scores/")
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import torch

from transformers import AutoConfig

from .arch import get_adapter, text_config
from .config import DataConfig, ImportanceConfig
from .data import iter_batches
from .data.cache import load_blocks
from .data.checks import check_data, check_seq_len
from .distill.dist import DistEnv, barrier, distributed_session
from .errors import MinitronError, ModelLoadError, SettingsError
from .eval import evaluate_loss
from .fingerprint import architecture_summary
from .importance import ImportanceScores, estimate_importance, magnitude_scores, random_scores
from .importance.task_depth import TaskScorer, block_metric, block_task_accuracy, task_of
from .loading import check_output_folder, load_model, locate_model, resolve_device, save_checkpoint
from .outputs import require_text
from .params import count_parameters, count_parameters_from_config
from .prune import describe_pruning, prune, resolve_target


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[DistEnv]:
    """torchrun's process group for a data-parallel stage (world size 1 without torchrun). Closed on
    exit only when this call started it: a caller that holds one for a whole run keeps it."""
    resolve_device(device)  # an unknown device, or cuda on a machine without one, is a clear error
    with distributed_session(device) as env:
        yield env


def forward_dtype(dtype: str | None, device: torch.device) -> str | None:
    """Importance and eval compute in bf16 on a GPU unless told otherwise (--dtype); elsewhere "auto"
    keeps the checkpoint's dtype (GGUF: float32). Reductions and losses accumulate in fp32 or fp64."""
    return "bfloat16" if dtype in (None, "auto") and device.type == "cuda" else dtype


def load_for_forward(model: str, env: DistEnv, *, dtype: str | None, device_map: str | None):
    """(model, tokenizer) for a forward-only stage: on this rank's device, or over every GPU with
    device_map "auto" (one process only: each rank would claim all GPUs)."""
    if device_map is not None and env.distributed:
        raise SettingsError("--device-map auto spreads one model over every GPU of the machine: run it as one "
                            "process (without torchrun), or drop --device-map to run data-parallel")
    return load_model(model, dtype=forward_dtype(dtype, env.device), device=str(env.device), device_map=device_map)


def compute_scores(model, tokenizer, data: DataConfig, settings: ImportanceConfig,
                   progress: bool = True, env: DistEnv | None = None) -> ImportanceScores:
    """Scores of `model` by `settings.criterion`; with `env` (torchrun), activation importance runs
    data-parallel and every rank returns the same scores. A task depth metric (lm-eval) runs on each rank
    in full."""
    if settings.depth_metric is not None:  # lm-eval missing or an unknown task: said before any work
        scorer = TaskScorer(model, tokenizer, task_of(settings.depth_metric), include_path=settings.task_path,
                            limit=settings.task_limit, batch_size=data.batch_size)
    scores = _width_and_layer_scores(model, tokenizer, data, settings, progress, env)
    if settings.depth_metric is not None:
        key = block_metric(settings.depth_metric, settings.task_block)
        scores.layers[key] = block_task_accuracy(model, get_adapter(model), scorer, settings.task_block, progress)
        scores.meta |= {"task_limit": settings.task_limit, "task_path": settings.task_path}
    return scores


def _width_and_layer_scores(model, tokenizer, data: DataConfig, settings: ImportanceConfig,
                            progress: bool, env: DistEnv | None) -> ImportanceScores:
    if settings.criterion == "magnitude":
        return magnitude_scores(model)
    if settings.criterion == "random":
        return random_scores(model, settings.seed)
    env = env or DistEnv(rank=0, world_size=1, local_rank=0, device=next(model.parameters()).device)
    blocks = load_blocks(data.data, tokenizer, data.seq_len, data.samples, split="train",
                         text_field=data.text_field, chat_template=data.chat_template)
    layer_loss_batches = -(-settings.layer_loss_samples // data.batch_size)
    return estimate_importance(
        model, list(iter_batches(blocks, data.batch_size)), seq_reduction=settings.seq_reduction,
        batch_reduction=settings.batch_reduction, layer_loss_batches=layer_loss_batches, progress=progress,
        meta={"model": model.config._name_or_path, "data": data.data, "seq_len": data.seq_len}, env=env)


def check_data_config(model: str, data: DataConfig) -> None:
    """Before `model` loads: its --data can be read, and --seq-len fits it (see `minitron.data.checks`)."""
    check_data(data.data, data.text_field, chat_template=data.chat_template, tokenizer_of=model)
    check_seq_len(model, data.seq_len)


def run_importance(model: str, out: str, data: DataConfig | None = None,
                   settings: ImportanceConfig | None = None, *, dtype: str | None = None,
                   device: str | None = None, overwrite: bool = False, device_map: str | None = None) -> Path:
    """Estimate importance on calibration data and save the scores folder `out`.

    Under torchrun each rank scores its share of the batches, the sums are all-reduced and rank 0
    alone writes `out` (the others wait for it). device_map "auto": one model over every GPU.
    """
    data, settings = data or DataConfig(), settings or ImportanceConfig()
    require_text(model, "--model")
    check_output_folder(out, overwrite, inputs=[model, data.data])
    check_data_config(model, data)
    with process_group(device) as env:
        loaded, tokenizer = load_for_forward(model, env, dtype=dtype, device_map=device_map)
        check_seq_len(loaded, data.seq_len)
        get_adapter(loaded)  # importance reads family-specific modules: "not supported yet" before any work
        start = time.perf_counter()
        scores = compute_scores(loaded, tokenizer, data, settings, progress=env.is_main, env=env)
        scores.meta["seconds"] = round(time.perf_counter() - start, 2)
        scores.meta["architecture"] = architecture_summary(loaded.config)
        scores.meta["processes"] = env.world_size
        if env.is_main:
            scores.save(out)
        barrier(env)
    return Path(out)


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
        source_config = load_config(model)
        return {**describe_pruning(source_config, target), "source_config": source_config}
    if out is None:
        raise SettingsError("--out is required (or pass --dry-run)")
    require_text(model, "--model")
    if scores is not None:
        require_text(scores, "--scores")
    check_output_folder(out, overwrite, inputs=[model, scores])
    if scores is None and criterion not in ("magnitude", "random"):
        raise SettingsError("pass --scores DIR (from `minitron importance`) or --criterion magnitude|random")
    # An impossible target is refused from the config, before the weights load (a GGUF file's config
    # comes with its weights: checked once they are loaded).
    config_alone = not (model.startswith("builtin:") or model.endswith(".gguf"))
    if config_alone:
        _check_target(load_config(model), target)
    loaded_scores = ImportanceScores.load(scores) if scores else None
    loaded, tokenizer = load_model(model, dtype=dtype, device=device)
    if not config_alone:
        _check_target(loaded.config, target)
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


def _check_target(config, target: dict) -> None:
    get_adapter(config)  # "not supported yet" for a family without an adapter
    resolve_target(config, target)


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
    sizes = {axis: getattr(text_config(config), axis, None) for axis in AXES}  # a multimodal model: its LM's
    if sizes["head_dim"] is None:
        sizes["head_dim"] = sizes["hidden_size"] // sizes["num_attention_heads"]
    family_sizes = {key: getattr(text_config(config), key) for key in _family_axes(config)  # experts, Mamba
                    if getattr(text_config(config), key, None) is not None}
    kinds = _layer_kinds(text_config(config))
    return {"model": model, "model_type": config.model_type, "tie_word_embeddings":
            bool(getattr(config, "tie_word_embeddings", False)), **sizes, **family_sizes,
            **({"layer_types": kinds} if kinds else {}), "params": counts.as_dict()}


def _layer_kinds(config) -> str | None:
    """The per-layer kinds (hybrid stacks: Mamba / attention / MLP / MoE; sliding-window attention),
    run-length coded ("mamba, attention x2, ..."), which a user reads before choosing a depth cut."""
    kinds = getattr(config, "layers_block_type", None) or getattr(config, "layer_types", None)
    if not kinds or len(set(kinds)) < 2:
        return None
    runs: list[list] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    return ", ".join(kind if count == 1 else f"{kind} x{count}" for kind, count in runs)


# Config sizes that only some families have (mixture-of-experts, hybrid Mamba), shown by `inspect` where present.
MOE_AXES = ("num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
            "shared_expert_intermediate_size")
# Granite 4.0-H's shared MLP width (shared_intermediate_size) is shown also without routed experts (Micro).
FAMILY_AXES = (*MOE_AXES, "shared_intermediate_size", "mamba_num_heads", "mamba_head_dim", "n_groups",
               "ssm_state_size", "mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state")


def _family_axes(config) -> tuple[str, ...]:
    """FAMILY_AXES plus the MoE sizes under the family's own names (NemotronH's n_routed_experts, n_group...);
    none of the MoE sizes where the family has sparse layers but this config has none: a dense Nemotron-H's
    config still carries default MoE values that describe nothing in the model."""
    from .arch.families import ADAPTERS
    from .arch.moe import moe_spec
    declared = getattr(ADAPTERS.get(getattr(config, "model_type", None)), "moe", None)
    if declared is None:
        return FAMILY_AXES
    own = tuple(key for key in (declared.num_experts_key, "num_experts_per_tok", declared.expert_width_key,
                                declared.shared_width_key, declared.routing_groups_key, declared.topk_group_key)
                if key is not None)
    if moe_spec(config) is None:
        hidden = {*MOE_AXES, *own} - {"shared_intermediate_size"}
        return tuple(key for key in FAMILY_AXES if key not in hidden)
    return (*FAMILY_AXES, *(key for key in own if key not in FAMILY_AXES))


def run_eval(model: str, data: DataConfig | None = None, split: str = "heldout", *,
             dtype: str | None = None, device: str | None = None, device_map: str | None = None) -> dict:
    """Held-out loss, perplexity and token count of `model` on `data`.

    Under torchrun each rank evaluates its share of the batches and every rank returns the loss over
    all of them; device_map "auto": one model over every GPU.
    """
    data = data or DataConfig(samples=64, seq_len=512)
    require_text(model, "--model")
    check_data_config(model, data)
    with process_group(device) as env:
        loaded, tokenizer = load_for_forward(model, env, dtype=dtype, device_map=device_map)
        check_seq_len(loaded, data.seq_len)
        blocks = load_blocks(data.data, tokenizer, data.seq_len, data.samples, split=split,
                             text_field=data.text_field, chat_template=data.chat_template)
        result = evaluate_loss(loaded, blocks, data.batch_size, progress=env.is_main, env=env)
    return {"model": model, "data": data.data, "split": split, "dtype": str(loaded.dtype).removeprefix("torch."),
            "processes": env.world_size, **result}


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
