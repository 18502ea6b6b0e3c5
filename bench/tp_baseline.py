"""Torch-Pruning (`pip install torch-pruning==1.6.1`) as a baseline: its own importance, its own surgery.

Used by `bench/retrain_study.py criteria` for the width target (hidden 432, MLP 864 on the built-in
SmolLM2-135M, a Llama). How Torch-Pruning is driven, and why:

- The model is loaded with eager attention (`attn_implementation="eager"`): Torch-Pruning traces the
  autograd graph of one forward, and eager attention is what its LLM example traces.
- Its `MetaPruner` is not used: with transformers 5.24 its constructor did not finish in 8 minutes
  even on a 4-layer tiny Llama (stuck in `DependencyGraph.get_all_groups`, which walks a group from
  every Linear's output channels; the hidden and MLP groups alone build in under a second, so the
  attention projections' groups, through RoPE and the grouped-query repeat, are the likely cause).
  Instead the dependency graph (`tp.DependencyGraph`) gives the two kinds of groups this target
  needs, the same groups MetaPruner ranks: one hidden-channel group from the embedding's output
  channels (every norm, projection and the LM head follow) and one MLP group per layer from
  `down_proj`'s input channels (gate_proj / up_proj outputs follow). Attention heads are untouched
  (the target keeps all 9; Torch-Pruning would only prune query heads within each KV group).
- Importance: `tp.importance.GroupMagnitudeImportance(p=2)` (its default magnitude criterion) or
  `tp.importance.ActivationImportance()`. The latter's hook stores the sum of |input| of every Linear
  over the tokens of the *last* forward only; we add it up over the calibration batches (the same
  64 x 256 tokens minitron uses), which equals one forward over all samples. Each group keeps its
  highest-scored channels (as MetaPruner's local pruning does), all scores taken before any surgery.
- Tied embeddings: Torch-Pruning prunes the embedding and the LM head as two modules, which unties
  the shared weight; both get the same indices, so we check they are equal and tie them again.
- Check: the same kept channels given to `minitron.prune` must give the same logits (`verify`), so
  the rows of the study differ only by which channels each criterion keeps.

The module names here (model.model.layers[i].mlp.down_proj, ...) are Llama's: Torch-Pruning works on
modules, not on minitron's adapters.
"""
from __future__ import annotations

import torch


def available() -> str | None:
    """None when torch_pruning 1.6.x imports, else a message saying how to install it."""
    try:
        import torch_pruning as tp
    except ImportError as error:
        return f"torch-pruning is not installed ({error}); run `.venv/bin/pip install torch-pruning==1.6.1`"
    if not tp.__version__.startswith("1.6"):
        return f"torch-pruning {tp.__version__} found; these rows were written for 1.6.1"
    return None


def _groups(tp, DG, model) -> dict:
    """{"hidden": group over all hidden channels, i: MLP group of layer i over all neurons}."""
    embed = model.model.embed_tokens
    groups = {"hidden": (embed, tp.prune_embedding_out_channels, embed.embedding_dim)}
    for i, layer in enumerate(model.model.layers):
        down = layer.mlp.down_proj
        groups[i] = (down, tp.prune_linear_in_channels, down.in_features)
    return groups


@torch.no_grad()
def _activation_sums(model, importance, batches) -> None:
    """Run the calibration through ActivationImportance's hooks, summing its per-forward |x| sums."""
    totals: dict = {}
    with importance.compute_importance(model):
        for batch in batches:
            model(input_ids=batch, use_cache=False)
            for module in model.modules():
                if hasattr(module, "_importance"):
                    totals[module] = totals.get(module, 0) + module._importance.double()
    for module, total in totals.items():
        module._importance = total.float()


def prune_with_torch_pruning(model, batches: list[torch.Tensor], criterion: str, target: dict) -> tuple:
    """Prune `model` (eager attention, modified in place) to `target` with Torch-Pruning.

    criterion: "activation" or "magnitude". Returns (model, kept) with kept = {"hidden": indices,
    layer: neuron indices} in the source model's numbering.
    """
    import torch_pruning as tp
    if set(target) - {"hidden_size", "intermediate_size"}:
        raise ValueError(f"the Torch-Pruning baseline prunes hidden_size / intermediate_size only, got {target}")
    if criterion == "activation":
        importance = tp.importance.ActivationImportance()
    elif criterion == "magnitude":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    else:
        raise ValueError(f"criterion must be activation or magnitude, got {criterion!r}")
    model.eval()
    example = batches[0][:1, :16]
    with torch.enable_grad():  # the graph is traced from the autograd graph of one forward
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                   output_transform=lambda out: out.logits)
    if criterion == "activation":
        _activation_sums(model, importance, batches)
    sizes = {"hidden": target.get("hidden_size"), "mlp": target.get("intermediate_size")}
    plan = {}
    for name, (module, fn, count) in _groups(tp, DG, model).items():
        keep_count = sizes["hidden" if name == "hidden" else "mlp"]
        if keep_count is None or keep_count >= count:
            continue
        scores = importance(DG.get_pruning_group(module, fn, idxs=list(range(count))))
        plan[name] = (module, fn, torch.topk(scores.float(), keep_count).indices.sort().values)
    for name, (module, fn, keep) in plan.items():
        drop = sorted(set(range(_count(module, fn))) - set(keep.tolist()))
        DG.get_pruning_group(module, fn, idxs=drop).prune()
    _retie_and_update_config(model, sizes)
    return model, {name: keep for name, (_, _, keep) in plan.items()}


def _count(module, fn) -> int:
    return module.embedding_dim if isinstance(module, torch.nn.Embedding) else module.in_features


def _retie_and_update_config(model, sizes: dict) -> None:
    embed, head = model.model.embed_tokens, model.lm_head
    if model.config.tie_word_embeddings and head.weight is not embed.weight:
        if not torch.equal(head.weight, embed.weight):
            raise RuntimeError("Torch-Pruning pruned the tied embedding and LM head differently")
        head.weight = embed.weight
    if sizes["hidden"] is not None:
        model.config.hidden_size = embed.embedding_dim
    if sizes["mlp"] is not None:
        model.config.intermediate_size = model.model.layers[0].mlp.down_proj.in_features
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")  # eager was only needed for tracing


@torch.no_grad()
def verify(tp_model, teacher, kept: dict, target: dict, block: torch.Tensor) -> float:
    """Max |logit difference| between the Torch-Pruning model and minitron.prune with the same channels."""
    import minitron
    from minitron.fingerprint import model_fingerprint
    config = teacher.config
    hidden = torch.zeros(config.hidden_size)
    hidden[kept.get("hidden", torch.arange(config.hidden_size))] = 1.0
    neurons = []
    for i in range(config.num_hidden_layers):
        row = torch.zeros(config.intermediate_size)
        row[kept.get(i, torch.arange(config.intermediate_size))] = 1.0
        neurons.append(row)
    scores = minitron.ImportanceScores(hidden=hidden, neurons=neurons,
                                       heads=[torch.ones(config.num_attention_heads)] * config.num_hidden_layers,
                                       layers={}, fingerprint=model_fingerprint(teacher))
    reference = minitron.prune(teacher, scores, target).eval()
    tp_model.eval()
    return float((tp_model(input_ids=block).logits - reference(input_ids=block).logits).abs().max())
