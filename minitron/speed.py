"""Throughput and latency of a causal LM on this device: prefill, then token-by-token decoding with the KV cache.

    from minitron.speed import measure_throughput
    measure_throughput(model, batch_size=1, seq_len=128, new_tokens=32)
    # {"prefill_tokens_per_s": ..., "decode_tokens_per_s": ..., "latency_ms": ..., ...}

The numbers do not depend on the weights' values, only on the architecture, dtype and device, so a
model built from a config with random weights measures the same as a trained one (the search uses that).
"""
from __future__ import annotations

import inspect
import statistics
import time

import torch
from torch import nn

from .errors import MinitronError
from .arch.base import text_config


def random_model(config, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """The model a config describes, randomly initialised directly on `device` (for speed measurements)."""
    from .arch import auto_model_class
    with torch.device(device):
        model = auto_model_class(config).from_config(config, dtype=dtype or torch.float32)
    return model.eval()


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a synchronize the clock stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_options(model: nn.Module) -> tuple[str, dict]:
    """The KV-cache argument's name (transformers 5 renamed past_key_values to cache) and, where the model
    takes it, logits_to_keep=1: like `generate`, only the last position's logits are computed."""
    parameters = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    return ("cache" if "cache" in parameters else "past_key_values"), extra


def _cache_of(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


def _one_request(model: nn.Module, input_ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation of `new_tokens` tokens."""
    cache_name, extra = _call_options(model)
    device = input_ids.device
    _synchronize(device)
    start = time.perf_counter()
    output = model(input_ids=input_ids, use_cache=True, **extra)
    next_token = output.logits[:, -1:].argmax(dim=-1)
    _synchronize(device)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    # The first new token came from the prefill; each further one is one decoding step.
    for _ in range(new_tokens - 1):
        output = model(input_ids=next_token, use_cache=True, **{cache_name: _cache_of(output)}, **extra)
        next_token = output.logits[:, -1:].argmax(dim=-1)
    _synchronize(device)
    return prefill, time.perf_counter() - start


def _check(model: nn.Module, batch_size: int, seq_len: int, new_tokens: int, repeats: int) -> None:
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("repeats", repeats)):
        if value < 1:
            raise MinitronError(f"throughput measurement needs {name} >= 1, got {value}")
    if new_tokens < 2:
        raise MinitronError(f"throughput measurement needs new_tokens >= 2 (one decoding step), got {new_tokens}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len + new_tokens > limit:
        raise MinitronError(f"seq_len {seq_len} + new_tokens {new_tokens} exceeds the model's "
                            f"max_position_embeddings ({limit}); measure at a shorter length")


@torch.no_grad()
def measure_throughput(model: nn.Module, batch_size: int = 1, seq_len: int = 128, new_tokens: int = 32,
                       repeats: int = 3, warmup: int = 1, seed: int = 0) -> dict:
    """Median over `repeats` timed requests (after `warmup` untimed ones) of a prompt of `seq_len` random
    tokens per sequence followed by greedy decoding of `new_tokens` tokens.

    prefill_tokens_per_s: prompt tokens processed per second (batch_size * seq_len / prefill time).
    decode_tokens_per_s: generated tokens per second with the KV cache (the prefill's token excluded).
    latency_ms: wall time of the whole request, prefill plus decoding.
    """
    _check(model, batch_size, seq_len, new_tokens, repeats)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab_size = text_config(model.config).vocab_size
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            _one_request(model, input_ids, new_tokens)
        timings = [_one_request(model, input_ids, new_tokens) for _ in range(repeats)]
    finally:
        model.train(was_training)
    prefill = statistics.median(t[0] for t in timings)
    decode = statistics.median(t[1] for t in timings)
    latency = statistics.median(t[0] + t[1] for t in timings)
    return {"prefill_tokens_per_s": batch_size * seq_len / prefill,
            "decode_tokens_per_s": batch_size * (new_tokens - 1) / decode,
            "latency_ms": latency * 1000.0, "batch_size": batch_size, "seq_len": seq_len,
            "new_tokens": new_tokens, "repeats": repeats, "device": str(device)}
