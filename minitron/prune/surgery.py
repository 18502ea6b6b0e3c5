"""Pure tensor surgery: slice a state dict along the adapter's axes, rewrite the config, build the model.

The pruned model is built by transformers itself from the rewritten config (on the meta device) and
then given the sliced tensors, so it is exactly the model `from_pretrained` will build later.
"""
from __future__ import annotations

import copy

import torch
from accelerate import init_empty_weights
from torch import nn

from ..arch import auto_model_class
from ..arch.base import ArchAdapter, Axis, text_config
from ..arch.layer_config import subset_layer_fields_
from ..arch.mamba import MAMBA_AXES, mamba_axis_index
from ..arch.moe import moe_spec
from .moe import moe_axis_index, rewrite_moe_config_
from .select import KeepPlan
from ..errors import ScoresError, TargetError
from .target import ResolvedTarget

# Config entries that describe the source model's provenance, not the pruned one's architecture.
_DROPPED_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


def head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices of whole heads: head h covers channels [h * head_dim, (h + 1) * head_dim)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def axis_index(axis: Axis, layer: int | None, plan: KeepPlan, config,
               adapter: ArchAdapter | None = None) -> torch.Tensor | None:
    """Kept indices along one axis (None: keep everything)."""
    if axis in MAMBA_AXES:
        if layer not in plan.mamba_heads:
            raise ScoresError(f"the importance scores hold no Mamba head scores for layer {layer}; recompute them "
                              "with this version of `minitron importance`")
        return mamba_axis_index(axis, adapter.mamba, config, plan.mamba_heads[layer], plan.mamba_head_dim[layer])
    head_dim = _head_dim(config)
    if axis is Axis.HIDDEN:
        return plan.hidden
    if axis is Axis.MLP:
        return plan.neurons[layer]
    if axis is Axis.Q:
        return head_channels(plan.q_heads[layer], head_dim)
    if axis is Axis.KV:
        return head_channels(plan.kv_heads[layer], head_dim)
    if axis is Axis.HEADS:
        return plan.q_heads[layer]
    if axis is Axis.QKV:
        q_size = config.num_attention_heads * head_dim
        kv = head_channels(plan.kv_heads[layer], head_dim)
        kv_size = config.num_key_value_heads * head_dim
        return torch.cat([head_channels(plan.q_heads[layer], head_dim), q_size + kv, q_size + kv_size + kv])
    if axis is Axis.GATE_UP:
        return torch.cat([plan.neurons[layer], config.intermediate_size + plan.neurons[layer]])
    if axis in _MOE_AXES:
        return moe_axis_index(axis, layer, plan, config)
    return None


_MOE_AXES = (Axis.EXPERT, Axis.EXPERT_MLP, Axis.EXPERT_GATE_UP, Axis.SHARED_MLP, Axis.SHARED_GATE_UP)


def select_along(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Keep `index` along `dim`. A 2-D index (rows of dim 0, kept along dim) keeps a different set in each
    row of dim 0: routed experts each keep their own neurons (dim 0 is already cut to the kept experts)."""
    index = index.to(tensor.device)
    if index.shape[-1] == tensor.shape[dim]:  # indices are sorted and distinct: everything is kept, in order
        return tensor
    if index.dim() == 1:
        return tensor.index_select(dim, index)
    shape = [1] * tensor.dim()
    shape[0], shape[dim] = index.shape
    expanded = list(tensor.shape)
    expanded[dim] = index.shape[1]
    return tensor.gather(dim, index.view(shape).expand(expanded))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def slice_state_dict(adapter: ArchAdapter, state: dict, plan: KeepPlan, config) -> dict:
    """The pruned state dict, with decoder layers renumbered 0..n-1 in their original order."""
    config = text_config(config)
    new_index = {old: new for new, old in enumerate(plan.layers)}
    new_state = {}
    for name, tensor in state.items():
        layer, axes = adapter.axes_of(name, tensor.dim())
        if layer is not None and layer not in new_index:
            continue
        if len(axes) != tensor.dim():
            raise ValueError(f"{adapter.model_type}: {name} has {tensor.dim()} dims but the adapter lists {axes}")
        source = tensor
        for dim, axis in enumerate(axes):
            index = axis_index(axis, layer, plan, config, adapter)
            if index is not None:
                tensor = select_along(tensor, dim, index)
        if layer is not None:
            name = adapter.layer_prefix(new_index[layer]) + name[len(adapter.layer_prefix(layer)):]
        # A tensor no axis cuts must still be copied: shared with the source, training the pruned model
        # would change the model it came from (e.g. the teacher it is distilled from).
        new_state[name] = tensor.clone() if tensor is source else tensor.contiguous()
    return new_state


def pruned_config(config, target: ResolvedTarget, kept_layers: list[int] | None = None):
    """The source config with the target sizes, head_dim written out, and per-layer fields for the kept layers."""
    new_config = copy.deepcopy(config)
    for key in _DROPPED_CONFIG_KEYS:
        if hasattr(new_config, key):
            delattr(new_config, key)
    # A multimodal checkpoint keeps its config; the sizes are its language model's.
    source_text, new_text = text_config(config), text_config(new_config)
    num_layers = source_text.num_hidden_layers
    if kept_layers is None:
        kept_layers = _default_kept_layers(num_layers, target)
    # Write head_dim explicitly: families that derive it from hidden_size / heads would change it.
    new_text.head_dim = _head_dim(source_text)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers"):
        setattr(new_text, key, getattr(target, key))
    rewrite_moe_config_(new_text, moe_spec(source_text), target.moe)
    subset_layer_fields_(new_text, source_text, kept_layers)
    _set_mamba_sizes(new_text, target)
    return new_config


def _set_mamba_sizes(new_config, target: ResolvedTarget) -> None:
    """The Mamba sizes of a hybrid stack, and what derives them from hidden_size (Granite's mamba_expand)."""
    from ..arch.families import ADAPTERS

    adapter = ADAPTERS.get(new_config.model_type)
    layout = adapter.mamba if adapter is not None else None
    if layout is None:
        return
    for key in ("mamba_num_heads", "mamba_head_dim"):
        if getattr(target, key) is not None:
            setattr(new_config, layout.config_key(key), getattr(target, key))
    layout.write_expand_(new_config)


def validate_pruned_config(new_config) -> None:
    """Run transformers' own config validation now, so a refused target fails before any work.

    For example Llama and Gemma configs demand hidden_size % num_attention_heads == 0 even when
    head_dim is explicit; save_pretrained and from_pretrained would refuse the pruned model later.
    """
    validate = getattr(new_config, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except Exception as error:  # transformers wraps validator errors in its own exception types
        cause = getattr(error, "__cause__", None) or error
        raise TargetError(f"transformers refuses the pruned {new_config.model_type} config: {cause}") from error


def _default_kept_layers(num_layers: int, target: ResolvedTarget) -> list[int]:
    """For a dry run without scores: the listed drops, else the last layers go (sizes are what matter)."""
    if target.drop_layers is not None:
        return [i for i in range(num_layers) if i not in set(target.drop_layers)]
    return list(range(target.num_hidden_layers))


def build_model(new_config, new_state: dict, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Instantiate the pruned architecture without initialising weights, then assign the tensors."""
    with init_empty_weights():
        model = auto_model_class(new_config).from_config(new_config, dtype=dtype)
    # Whether the model really shares its embedding with the LM head: the config's flag alone is not enough
    # (NemotronH has tie_word_embeddings but never ties, so its lm_head.weight must be loaded).
    model.tie_weights()
    output_embeddings = model.get_output_embeddings()
    tied = output_embeddings is not None and output_embeddings.weight is model.get_input_embeddings().weight
    state = {k: v for k, v in new_state.items() if not (tied and k == "lm_head.weight")}
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"pruned state does not fit the pruned config: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
    model.tie_weights()
    leftover = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise RuntimeError(f"parameters left without weights after pruning: {leftover}")
    return model
