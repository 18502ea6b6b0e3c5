"""Mamba-2 mixers: where their sizes live in a config, how their fused tensors are laid out, how they shrink.

A Mamba-2 mixer has `H` heads of `P` channels each (inner width I = H * P) in `G` groups; every group of
H / G consecutive heads shares one B and one C of `N` (ssm_state_size) channels. transformers lays out
- `in_proj` rows as [z (I) | x (I) | B (G * N) | C (G * N) | dt (H)] (z gates the output),
- `conv1d` channels as [x | B | C] (a depthwise causal convolution),
- `A_log`, `D`, `dt_bias` with one entry per head,
- the gated RMSNorm and `out_proj`'s input over the I channels, head-major (head h: [h * P, (h + 1) * P)).

Pruning keeps G and N (B and C untouched), keeps the same number of heads in every group (so head h still
reads its own group's B and C, and the gated norm's groups of I / G channels stay the groups of heads),
and keeps one shared set of head-dim positions in every head of a layer (the config has one head dim).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Axis

MAMBA_TARGET_KEYS = ("mamba_num_heads", "mamba_head_dim")
"""minitron's target names for the two Mamba axes (NemotronH's config names); each family maps them."""


@dataclass(frozen=True)
class MambaLayout:
    """Where one family keeps its Mamba-2 sizes and modules (paths relative to a decoder layer)."""

    num_heads_key: str = "mamba_num_heads"
    head_dim_key: str = "mamba_head_dim"
    n_groups_key: str = "n_groups"
    state_size_key: str = "ssm_state_size"
    conv_kernel_key: str = "conv_kernel"
    out_proj: str = "mixer.out_proj"
    """Module whose *input* is the gated-normed inner activation, (batch, seq, heads * head_dim)."""
    gated_norm_weight: str = "mixer.norm.weight"
    expand_key: str | None = None
    """A whole-number config multiplier that sizes the mixer from hidden_size (Granite: inner width =
    mamba_expand x hidden_size, checked against heads x head_dim); None: the heads alone size it."""
    inner_width_key: str | None = None
    """A config key holding the inner width heads x head_dim itself (Falcon-H1's mamba_d_ssm, which when None
    means mamba_expand x hidden_size): written out after pruning, so it never derives from hidden_size."""

    def config_key(self, target_key: str) -> str:
        return {"mamba_num_heads": self.num_heads_key, "mamba_head_dim": self.head_dim_key}[target_key]

    def sizes(self, config) -> tuple[int, int, int, int]:
        """(heads, head_dim, groups, state_size) of the config's Mamba mixers."""
        return tuple(int(getattr(config, key)) for key in
                     (self.num_heads_key, self.head_dim_key, self.n_groups_key, self.state_size_key))

    def inner_width_problem(self, heads: int, head_dim: int, hidden_size: int) -> str | None:
        """Why these sizes cannot be written into the config (None: they can)."""
        if self.expand_key is None or (heads * head_dim) % hidden_size == 0:
            return None
        return (f"the Mamba inner width is {self.expand_key} x hidden_size with a whole-number {self.expand_key}, "
                f"so Mamba heads x head dim ({heads} x {head_dim} = {heads * head_dim}) must be a multiple of "
                f"hidden_size ({hidden_size}); choose hidden_size, mamba_num_heads and mamba_head_dim together "
                f"(e.g. hidden_size a divisor of {heads * head_dim})")

    def write_expand_(self, config) -> None:
        """Set the multiplier that reproduces the config's heads x head_dim from its hidden_size, or the inner
        width itself where the family's config holds one."""
        heads, head_dim, _, _ = self.sizes(config)
        if self.expand_key is not None:
            setattr(config, self.expand_key, heads * head_dim // config.hidden_size)
        if self.inner_width_key is not None:
            setattr(config, self.inner_width_key, heads * head_dim)


def mamba_cache_bytes(layout: MambaLayout, config, mamba_layers: int, batch: int, bytes_per_value: int) -> int:
    """What transformers' cache holds for `mamba_layers` Mamba-2 mixers generating `batch` sequences, whatever
    their length: per mixer and sequence a conv state (conv channels [x | B C] x conv kernel) in the model's
    dtype, and an SSM state (heads x head_dim x ssm_state_size), which the scan keeps in float32 even in a
    bf16 model."""
    heads, head_dim, groups, state_size = layout.sizes(config)
    conv_channels = heads * head_dim + 2 * groups * state_size
    conv = conv_channels * int(getattr(config, layout.conv_kernel_key)) * bytes_per_value
    ssm = heads * head_dim * state_size * max(bytes_per_value, 4)
    return mamba_layers * batch * (conv + ssm)


MAMBA_AXES = (Axis.MAMBA_IN, Axis.MAMBA_CONV, Axis.MAMBA_INNER, Axis.MAMBA_HEADS)


def mamba_layer_params(*, prefix: str = "mixer.", proj_bias: bool = True,
                       conv_bias: bool = True) -> dict[str, tuple[Axis, ...]]:
    """The table of one Mamba-2 mixer under `prefix` (HF's Mamba2 / NemotronH `mixer.`, Granite's `mamba.`)."""
    table: dict[str, tuple[Axis, ...]] = {
        "in_proj.weight": (Axis.MAMBA_IN, Axis.HIDDEN),
        "conv1d.weight": (Axis.MAMBA_CONV, Axis.KEEP, Axis.KEEP),  # (channels, 1, kernel)
        "A_log": (Axis.MAMBA_HEADS,),
        "D": (Axis.MAMBA_HEADS,),
        "dt_bias": (Axis.MAMBA_HEADS,),
        "norm.weight": (Axis.MAMBA_INNER,),
        "out_proj.weight": (Axis.HIDDEN, Axis.MAMBA_INNER),
    }
    if conv_bias:
        table["conv1d.bias"] = (Axis.MAMBA_CONV,)
    if proj_bias:
        table |= {"in_proj.bias": (Axis.MAMBA_IN,), "out_proj.bias": (Axis.HIDDEN,)}
    return {prefix + name: axes for name, axes in table.items()}


def inner_channels(kept_heads: torch.Tensor, kept_head_dim: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Inner channel indices of the kept heads x kept head-dim positions, head-major like the source."""
    return (kept_heads[:, None] * head_dim + kept_head_dim[None, :]).reshape(-1)


def mamba_axis_index(axis: Axis, layout: MambaLayout, config, kept_heads: torch.Tensor,
                     kept_head_dim: torch.Tensor) -> torch.Tensor:
    """Kept indices along one Mamba axis of a layer that keeps `kept_heads` and `kept_head_dim`."""
    heads, head_dim, groups, state_size = layout.sizes(config)
    inner_size, bc_size = heads * head_dim, 2 * groups * state_size
    inner = inner_channels(kept_heads, kept_head_dim, head_dim)
    bc = torch.arange(bc_size)
    if axis is Axis.MAMBA_IN:  # [z | x | B C | dt]
        return torch.cat([inner, inner_size + inner, 2 * inner_size + bc, 2 * inner_size + bc_size + kept_heads])
    if axis is Axis.MAMBA_CONV:  # [x | B C]
        return torch.cat([inner, inner_size + bc])
    if axis is Axis.MAMBA_INNER:
        return inner
    if axis is Axis.MAMBA_HEADS:
        return kept_heads
    raise ValueError(f"{axis} is not a Mamba axis")


def select_mamba_heads(head_scores: torch.Tensor, n_groups: int, num_heads: int) -> torch.Tensor:
    """The `num_heads // n_groups` best heads of every group, in ascending order (groups are contiguous)."""
    from ..prune.select import top_k_sorted  # the one top-k rule of every axis

    per_group = head_scores.float().view(n_groups, -1)
    heads_per_group = num_heads // n_groups
    return torch.cat([g * per_group.shape[1] + top_k_sorted(per_group[g], heads_per_group)
                      for g in range(n_groups)])


def rescale_gated_norms(layout: MambaLayout):
    """A fix_state that keeps the gated RMSNorm's scale when heads or head dims are pruned.

    The norm divides each group's sum of squares by the group's channel count, I / G. A pruned head whose
    output was zero added nothing to the sum, but the count shrinks with it: multiplying the norm weight
    by sqrt(old count / new count) makes the kept channels come out exactly as before (up to epsilon).
    """
    @torch.no_grad()
    def fix(new_state: dict, old_config, new_config) -> None:
        old_heads, old_dim, *_ = layout.sizes(old_config)
        new_heads, new_dim, *_ = layout.sizes(new_config)
        if old_heads * old_dim == new_heads * new_dim:
            return
        scale = (old_heads * old_dim / (new_heads * new_dim)) ** 0.5
        for name in [name for name in new_state if name.endswith("." + layout.gated_norm_weight)]:
            new_state[name] = new_state[name] * scale
    return fix
