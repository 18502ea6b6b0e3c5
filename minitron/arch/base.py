"""The adapter protocol: everything minitron needs to know about one model family.

An adapter is a table, in the spirit of peft's per-architecture tables:
- which submodules hold the activations that importance estimation reads (hooks);
- for every parameter in the state dict, which pruning axis each of its dimensions belongs to, so that
  pruning is generic tensor slicing (`prune/`) and a parameter nobody described is an error, never a
  silently unpruned tensor;
- the family's quirks that must be fixed after slicing so the smaller model computes what its kept
  weights mean (for example Gemma's embedding scale, which is derived from `hidden_size`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .mamba import MambaLayout


class Axis(str, Enum):
    """What one dimension of a parameter indexes."""

    HIDDEN = "hidden"  # the residual stream / embedding channels, one global order
    MLP = "mlp"  # MLP intermediate neurons of one layer
    Q = "q"  # query heads x head_dim of one layer
    KV = "kv"  # key/value heads x head_dim of one layer
    HEADS = "heads"  # one entry per query head of one layer (gpt_oss attention sinks)
    QKV = "qkv"  # a fused [q; k; v] projection (phi3)
    GATE_UP = "gate_up"  # a fused [gate; up] projection (phi3)
    KEEP = "keep"  # never pruned (vocabulary, head_dim of q/k norms)
    # Mamba-2 mixers (layout in arch/mamba.py): heads x head_dim of one layer, in four packings.
    MAMBA_IN = "mamba_in"  # in_proj rows [z | x | B C | dt]
    MAMBA_CONV = "mamba_conv"  # conv1d channels [x | B C]
    MAMBA_INNER = "mamba_inner"  # heads x head_dim channels (gated norm, out_proj input)
    MAMBA_HEADS = "mamba_heads"  # one entry per head (A_log, D, dt_bias)
    # Mixture-of-experts axes (minitron/arch/moe.py): fused 3-D expert tensors are (experts, out, in).
    EXPERT = "expert"  # whole routed experts of one layer (router rows, the leading dim of expert tensors)
    EXPERT_MLP = "expert_mlp"  # FFN neurons inside each routed expert (each expert keeps its own best)
    EXPERT_GATE_UP = "expert_gate_up"  # a fused [gate; up] of routed experts
    SHARED_MLP = "shared_mlp"  # FFN neurons of the always-active shared expert (qwen2_moe, granitemoehybrid)
    SHARED_GATE_UP = "shared_gate_up"  # a fused [gate; up] of the shared expert (granitemoehybrid's shared_mlp)


H, M, Q, KV, QKV, GU, KEEP = Axis.HIDDEN, Axis.MLP, Axis.Q, Axis.KV, Axis.QKV, Axis.GATE_UP, Axis.KEEP

StateFix = Callable[[dict, object, object], None]
LogitTransform = Callable[[torch.Tensor, object], torch.Tensor]


@dataclass(frozen=True)
class ArchAdapter:
    """How one HF `model_type` is laid out.

    Names are relative: `layer_params` to one decoder layer (`model.layers.{i}.`), `global_params` to
    the whole `*ForCausalLM`; module names are dotted paths inside a decoder layer.
    """

    model_type: str
    global_params: dict[str, tuple[Axis, ...]]
    layer_params: dict[str, tuple[Axis, ...]]
    mlp_down_proj: str = "mlp.down_proj"
    """Module whose *input* is the MLP neuron activation (after activation / gating)."""
    attn_out_proj: str = "self_attn.o_proj"
    """Module whose *input* is the concatenated per-head attention output."""
    hidden_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    """Norms whose *outputs* feed attention or the MLP: they score the hidden channels."""
    hidden_inputs: tuple[str, ...] = ()
    """Modules whose *inputs* are the residual stream itself, where no norm precedes attention or the MLP
    (OLMo 2 normalises outputs instead): they score the hidden channels too."""
    layers_path: str = "model.layers"
    base_model_path: str = "model"
    """The decoder stack without the LM head: its last_hidden_state is already final-normed."""
    lm_head_path: str = "lm_head"
    logit_transform: LogitTransform | None = None
    """What the family applies to lm_head's output (Gemma soft-capping, Granite's logits_scaling)."""
    embed_path: str = "model.embed_tokens"
    gated_mlp: bool = True
    fix_state: StateFix | None = None
    """Called after slicing as fix_state(new_state, old_config, new_config) to undo size-derived quirks."""
    notes: str = ""
    extra_layer_list_fields: tuple[str, ...] = field(default=())
    """Per-layer config lists beyond the generic detection (lists of length num_hidden_layers)."""
    untouched_prefixes: tuple[str, ...] = ()
    """Parameters under these prefixes are copied whole (a multimodal checkpoint's vision tower and projector)."""
    keeps_hidden_size: bool = False
    """hidden_size cannot be pruned (a multimodal projector maps image features into it)."""
    mamba: "MambaLayout | None" = None
    """The family's Mamba-2 mixers (arch/mamba.py), for hybrid stacks; None: no Mamba layers."""
    hybrid: bool = False
    """Layers differ in kind (Mamba, attention, MLP): a layer may lack any hooked module."""
    unsupported_reason: Callable[[object], str | None] | None = None
    """Given a config, why this family's adapter cannot handle that variant (None: it can)."""
    moe: object | None = None
    """A `minitron.arch.moe.MoeSpec` for mixture-of-experts families (None: dense)."""
    attention_layers: Callable[[object], list[int]] | None = None
    """Given a config, the layers that hold a KV cache when they generate (None: every layer)."""
    state_bytes: Callable[[object, int, int], int] | None = None
    """Given (config, batch, bytes per value), the bytes of recurrent state a generating model holds besides
    its KV cache (Mamba layers' conv and SSM states); None: none."""
    layer_returns_tuple: bool = False
    """A decoder layer returns `(hidden_states,)` and the model reads `[0]` of it (Falcon-H1), not the tensor:
    whatever stands in for a layer (depth importance's skipped layer) must answer the same way."""

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def base_model(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.base_model_path)

    def logits_from_hidden(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits for final hidden states (..., hidden) -> (..., vocab)."""
        logits = model.get_submodule(self.lm_head_path)(hidden)
        if self.logit_transform is not None:
            logits = self.logit_transform(logits, text_config(model.config))
        return logits

    @contextlib.contextmanager
    def capture_layer_states(self, model: nn.Module) -> Iterator[list[torch.Tensor]]:
        """Within the block, a forward pass fills the yielded list with (batch, seq, hidden) tensors:
        entry 0 is the input of decoder layer 0 (the embedding output, after any embedding scale) and
        entry i + 1 the output of decoder layer i, all before the final norm.

        Unlike HF's `output_hidden_states`, whose last entry is taken after the final norm, every entry
        means the same thing whatever the depth, so a pruned student's layer i pairs with its teacher
        layer like with like. The tensors stay in the autograd graph; the hooks sit on the layers
        themselves, outside any activation checkpoint, and are removed when the block ends.
        """
        layers = self.layers(model)
        states: list[torch.Tensor | None] = [None] * (len(layers) + 1)

        def save_input(module, args, kwargs):
            states[0] = args[0] if args else kwargs["hidden_states"]

        def save_output(index: int):
            def hook(module, args, output):
                states[index + 1] = output[0] if isinstance(output, (tuple, list)) else output
            return hook

        handles = [layers[0].register_forward_pre_hook(save_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(save_output(i)) for i, layer in enumerate(layers)]
        try:
            yield states
        finally:
            for handle in handles:
                handle.remove()

    def layer_module(self, layer: nn.Module, path: str) -> nn.Module | None:
        """The submodule `path` of one decoder layer; None where a hybrid stack's layer has no such part, or
        a mixture-of-experts layer has no dense MLP (its experts are hooked by importance/moe.py)."""
        try:
            return layer.get_submodule(path)
        except AttributeError:
            if self.hybrid or self.moe is not None:
                return None
            raise

    def lm_head_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters `logits_from_hidden` reads (the LM head's; the embedding weight when tied)."""
        return list(model.get_submodule(self.lm_head_path).parameters())

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}."

    def axes_of(self, name: str, ndim: int = 0) -> tuple[int | None, tuple[Axis, ...]]:
        """(layer index or None, axes) of a state-dict key; KeyError names the unknown parameter.

        A parameter under `untouched_prefixes` is kept whole: KEEP on each of its `ndim` dimensions.
        """
        if name.startswith(self.untouched_prefixes):  # str.startswith(()) is False
            return None, (KEEP,) * ndim
        prefix = self.layers_path + "."
        if name.startswith(prefix):
            index_text, _, local = name[len(prefix):].partition(".")
            if local in self.layer_params:
                return int(index_text), self.layer_params[local]
        elif name in self.global_params:
            return None, self.global_params[name]
        raise KeyError(f"{self.model_type}: no pruning axes are known for parameter {name!r}")

    def embedding_param_names(self) -> list[str]:
        """Global parameters that index the vocabulary (embeddings and LM head)."""
        return [name for name, axes in self.global_params.items() if axes and axes[0] == KEEP and len(axes) == 2]


def text_config(config):
    """The decoder's config: the config itself, or the `text_config` of a multimodal checkpoint."""
    get = getattr(config, "get_text_config", None)
    return config if get is None else get(decoder=True)


def language_model_of(adapter: ArchAdapter, model_type: str, untouched_prefixes: tuple[str, ...]) -> ArchAdapter:
    """The adapter of a multimodal checkpoint (`model.language_model` inside `model`) from its text family's.

    The vision tower and projector are copied whole, and hidden_size is kept: the projector maps image
    features into it. The size-derived state fix (Gemma's embedding scale) is then never needed.
    """
    inner = "model.language_model."
    moved = {name.replace("model.", inner, 1) if name.startswith("model.") else name: axes
             for name, axes in adapter.global_params.items()}
    return dataclasses.replace(adapter, model_type=model_type, global_params=moved,
                               layers_path=inner + "layers", base_model_path=inner[:-1],
                               embed_path=inner + "embed_tokens", untouched_prefixes=untouched_prefixes,
                               keeps_hidden_size=True, fix_state=None,
                               notes=f"the language model of a multimodal checkpoint; {adapter.notes}".rstrip("; "))


def llama_like_layer_params(*, attention_bias: bool = False, qk_norm: bool = False,
                            norm_bias: bool = False, extra_norms: tuple[str, ...] = (),
                            gated_mlp: bool = True) -> dict[str, tuple[Axis, ...]]:
    """The layer table shared by most families: separate q/k/v/o and gate/up/down projections."""
    table: dict[str, tuple[Axis, ...]] = {
        "self_attn.q_proj.weight": (Q, H),
        "self_attn.k_proj.weight": (KV, H),
        "self_attn.v_proj.weight": (KV, H),
        "self_attn.o_proj.weight": (H, Q),
        "mlp.up_proj.weight": (M, H),
        "mlp.down_proj.weight": (H, M),
    }
    if gated_mlp:
        table["mlp.gate_proj.weight"] = (M, H)
    if attention_bias:
        table |= {"self_attn.q_proj.bias": (Q,), "self_attn.k_proj.bias": (KV,), "self_attn.v_proj.bias": (KV,)}
    if qk_norm:
        table |= {"self_attn.q_norm.weight": (KEEP,), "self_attn.k_norm.weight": (KEEP,)}
    for norm in ("input_layernorm", "post_attention_layernorm", *extra_norms):
        table[f"{norm}.weight"] = (H,)
        if norm_bias:
            table[f"{norm}.bias"] = (H,)
    return table


def whole_projection_qk_norms() -> dict[str, tuple[Axis, ...]]:
    """q/k norms over the whole projection (OLMo 2/3): one weight per channel of every head, so they are
    sliced with the heads. Their RMS is taken over all heads at once: dropping heads changes the
    remaining heads' normalisation, unlike per-head q/k norms (Qwen 3, Gemma 3), which keep head_dim."""
    return {"self_attn.q_norm.weight": (Q,), "self_attn.k_norm.weight": (KV,)}


def standard_global_params(*, norm_bias: bool = False) -> dict[str, tuple[Axis, ...]]:
    table: dict[str, tuple[Axis, ...]] = {
        "model.embed_tokens.weight": (KEEP, H),
        "lm_head.weight": (KEEP, H),
        "model.norm.weight": (H,),
    }
    if norm_bias:
        table["model.norm.bias"] = (H,)
    return table


def optional_bias_params(table: dict[str, tuple[Axis, ...]]) -> dict[str, tuple[Axis, ...]]:
    """Bias entries for every linear weight in `table`: a bias follows its weight's output axis.

    Configs such as `attention_bias` / `mlp_bias` switch biases on in several families; listing them
    all is harmless because only parameters present in the state dict are looked up.
    """
    return {name[: -len("weight")] + "bias": axes[:1] for name, axes in table.items()
            if name.endswith("proj.weight")}


@torch.no_grad()
def rescale_scaled_embedding(new_state: dict, old_config, new_config) -> None:
    """Gemma multiplies embeddings by sqrt(hidden_size), which pruning `hidden_size` changes.

    Scale the (tied) embedding by c = sqrt(old / new) so the first layer sees the same values, and the
    final norm's effective weight (1 + w) by 1 / c so the tied LM head still produces the same logits.
    """
    if new_config.hidden_size == old_config.hidden_size:
        return
    scale = (old_config.hidden_size / new_config.hidden_size) ** 0.5
    new_state["model.embed_tokens.weight"] = new_state["model.embed_tokens.weight"] * scale
    if "lm_head.weight" in new_state:
        new_state["lm_head.weight"] = new_state["lm_head.weight"] * scale
    norm = new_state["model.norm.weight"]
    new_state["model.norm.weight"] = (1.0 + norm.float()) / scale - 1.0


def soft_cap_logits(logits: torch.Tensor, config) -> torch.Tensor:
    cap = getattr(config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def scale_logits(logits: torch.Tensor, config) -> torch.Tensor:
    return logits / config.logits_scaling
