"""`minitron.estimate_importance(model, batches, ...)`: forward-only activation importance."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..arch import get_adapter, text_config
from ..errors import MinitronError
from ..distill.dist import DistEnv
from ..eval.loss import position_ids_from_mask, reduce_sums
from ..fingerprint import model_fingerprint
from .aggregate import REDUCTIONS
from .depth import layer_loss_increase
from .hooks import ActivationCollector
from ..arch.moe import moe_spec
from .moe import ExpertCollector
from .scores import ImportanceScores
from ..verbosity import progress_bar


def as_batch_dict(batch, device: torch.device) -> dict:
    """A token tensor (batch, seq) or a dict with input_ids [and attention_mask] -> dict on `device`."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    elif not isinstance(batch, dict) or "input_ids" not in batch:
        raise MinitronError("calibration batches must be token tensors (batch, seq) or dicts with 'input_ids'")
    input_ids = batch["input_ids"]
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask is None:
        return {"input_ids": input_ids.to(device), "attention_mask": None}
    # Real tokens get the positions they would have unpadded, so left padding changes no score.
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": position_ids_from_mask(mask).to(device)}


@torch.inference_mode()
def estimate_importance(
    model: nn.Module,
    batches: Iterable,
    *,
    seq_reduction: str = "mean",
    batch_reduction: str = "l2",
    layer_loss_batches: int = 0,
    progress: bool = True,
    meta: dict | None = None,
    env: DistEnv | None = None,
) -> ImportanceScores:
    """Score every MLP neuron, attention head, hidden channel and layer of `model`.

    batches: iterable of token-id tensors (batch, seq) or dicts with `input_ids` (and `attention_mask`).
    seq_reduction / batch_reduction: "mean" | "l2" | "var" (the paper's best: mean over the sequence,
        L2 over the batch). Accumulated on the fly: memory does not grow with the number of samples.
    layer_loss_batches: also score layers by the LM-loss increase when each is skipped, on the first
        N batches (costs num_layers extra forwards per batch; 0 = Block Influence only).
    env: under torchrun (`init_distributed()`), data-parallel: every rank is given the same `batches`,
        runs every world_size-th one, and the sums are all-reduced; each rank returns the scores one
        process would compute over all of them (equal to float rounding).
    """
    for name, value in (("seq_reduction", seq_reduction), ("batch_reduction", batch_reduction)):
        if value not in REDUCTIONS:
            raise MinitronError(f"{name} must be one of {REDUCTIONS}, got {value!r}")
    adapter = get_adapter(model)
    device = next(model.parameters()).device
    config = text_config(model.config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    was_training = model.training
    model.eval()
    collector = ActivationCollector(model, adapter, seq_reduction, head_dim)
    expert_collector = ExpertCollector(model, adapter) if moe_spec(model) is not None else None
    kept_for_loss: list[dict] = []
    samples = tokens = loss_samples = 0
    rank, world_size = (env.rank, env.world_size) if env is not None else (0, 1)
    progress = progress and rank == 0
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        for index, raw in enumerate(progress_bar(batches, enabled=progress, total=total, desc="importance",
                                                 unit="batch")):
            if index % world_size != rank:
                continue  # another rank's batch
            batch = as_batch_dict(raw, device)
            mask = batch["attention_mask"]
            num_tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            collector.begin_batch(mask, num_tokens)
            if expert_collector is not None:
                expert_collector.begin_batch(mask, num_tokens)
            # Only the activations matter: skip the LM head for all but one position.
            model(**batch, use_cache=False, logits_to_keep=1)
            collector.end_batch()
            samples += batch["input_ids"].shape[0]
            tokens += num_tokens
            if index < layer_loss_batches:  # the first N batches overall, each on the rank that ran it
                kept_for_loss.append(batch)
                loss_samples += batch["input_ids"].shape[0]
    finally:
        collector.remove()
        if expert_collector is not None:
            expert_collector.remove()
    collector.all_reduce_(env)
    own_samples = [samples if index == rank else 0 for index in range(world_size)]
    samples, tokens, loss_samples, *per_process = (int(v) for v in reduce_sums(
        [samples, tokens, loss_samples, *own_samples], env))
    if expert_collector is not None:
        expert_collector.all_reduce_(env)
    if samples == 0:
        raise MinitronError("no calibration batches were given")
    layers = {"block_influence": collector.block_influence()}
    if loss_samples:  # every rank takes part, with or without batches of its own
        layers["lm_loss"] = layer_loss_increase(model, adapter, kept_for_loss, progress, env)
    model.train(was_training)
    settings = {"criterion": "activation", "seq_reduction": seq_reduction, "batch_reduction": batch_reduction,
                "num_samples": samples, "num_tokens": tokens, "layer_loss_samples": loss_samples,
                "samples_per_process": per_process}
    return ImportanceScores(
        hidden=collector.hidden.result(batch_reduction),
        neurons=collector.per_layer(collector.neurons, batch_reduction),
        heads=collector.per_layer(collector.heads, batch_reduction),
        layers=layers,
        fingerprint=model_fingerprint(model),
        meta={**settings, **(meta or {})},
        mamba_heads={i: acc.result(batch_reduction) for i, acc in collector.mamba_heads.items()},
        mamba_head_dim={i: acc.result(batch_reduction) for i, acc in collector.mamba_channels.items()},
        **(expert_collector.score_fields() if expert_collector is not None else {}),
    )
