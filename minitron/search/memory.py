"""Serving memory of an architecture, from its config: weights + KV cache (+ recurrent state) at a batch and context.

memory = parameters x bytes per value
       + KV cache: 2 (K and V) x KV heads x head_dim x batch x tokens x bytes, summed over attention layers,
         where a sliding-window layer holds at most `sliding_window` tokens
       + recurrent state (Mamba layers): the adapter's `state_bytes(config, batch, bytes)` when it has one.

Hooks for families whose layers are not all attention (hybrid Mamba stacks), fields of the adapter:
`attention_layers(config) -> list[int]` (the layers that hold a KV cache; None: every layer) and
`state_bytes(config, batch, bytes_per_value) -> int` (None: no other state). Both get the decoder's config.
"""
from __future__ import annotations

from ..arch import get_adapter
from ..arch.base import text_config

GB = 1e9


def attention_layer_indices(config) -> list[int]:
    hook = getattr(get_adapter(config), "attention_layers", None)
    config = text_config(config)
    return list(hook(config)) if hook is not None else list(range(config.num_hidden_layers))


def kv_cache_bytes(config, batch: int, context: int, bytes_per_value: int) -> int:
    indices, config = attention_layer_indices(config), text_config(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    total = 0
    for index in indices:
        sliding = index < len(layer_types) and "sliding" in str(layer_types[index]) and window
        tokens = min(context, window) if sliding else context
        total += 2 * config.num_key_value_heads * head_dim * batch * tokens * bytes_per_value
    return total


def recurrent_state_bytes(config, batch: int, bytes_per_value: int) -> int:
    hook = getattr(get_adapter(config), "state_bytes", None)
    return int(hook(text_config(config), batch, bytes_per_value)) if hook is not None else 0


def memory_gb(config, total_params: int, batch: int, context: int, bytes_per_value: int) -> float:
    """Weights, KV cache and recurrent state of `config` in GB (1e9 bytes)."""
    weights = total_params * bytes_per_value
    cache = kv_cache_bytes(config, batch, context, bytes_per_value)
    return (weights + cache + recurrent_state_bytes(config, batch, bytes_per_value)) / GB
