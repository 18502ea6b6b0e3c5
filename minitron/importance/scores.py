"""Importance scores: one object per model, saved to a folder so one calibration serves many targets.

Folder layout: `scores.safetensors` (tensors) and `scores.json` (fingerprint, data, settings, sizes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ScoresError, ScoresNotFoundError
from ..io import atomic_write_text, atomic_directory
from ..outputs import check_replaceable, require_text

SCORES_TENSORS = "scores.safetensors"
SCORES_META = "scores.json"
FORMAT_VERSION = 2  # 2: the model fingerprint no longer depends on the dtype (see fingerprint.py)


@dataclass
class ImportanceScores:
    """Higher is more important, on every axis.

    hidden:  (hidden_size,) one global order of embedding channels
    neurons: per layer, (intermediate_size,)
    heads:   per layer, (num_attention_heads,)
    layers:  metric name -> (num_hidden_layers,), e.g. "block_influence", "lm_loss"
    mamba_heads / mamba_head_dim: Mamba layer index -> (mamba heads,) / (mamba head dim,)

    In a hybrid stack a layer without an MLP (attention) has an empty neuron (head) tensor.

    Mixture-of-experts models also have, for each sparse layer (keyed by layer index):
    experts:        metric name ("reap", "frequency", "random") -> layer -> (num_experts,)
    expert_neurons: layer -> (num_experts, expert width), each expert's FFN neurons
    shared_neurons: layer -> (shared-expert width,)
    (`neurons` of a sparse layer is empty: it has no dense MLP.)
    """

    hidden: torch.Tensor
    neurons: list[torch.Tensor]
    heads: list[torch.Tensor]
    layers: dict[str, torch.Tensor]
    fingerprint: str
    meta: dict = field(default_factory=dict)
    mamba_heads: dict[int, torch.Tensor] = field(default_factory=dict)
    mamba_head_dim: dict[int, torch.Tensor] = field(default_factory=dict)
    experts: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    expert_neurons: dict[int, torch.Tensor] = field(default_factory=dict)
    shared_neurons: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.neurons)

    def layer_scores(self, metric: str) -> torch.Tensor:
        if metric not in self.layers:
            raise ScoresError(
                f"these scores have no layer metric {metric!r}; they have: {', '.join(self.layers) or 'none'}. "
                "Recompute with `minitron importance` (add --layer-loss for the LM-loss metric)."
            )
        return self.layers[metric]

    def expert_scores(self, metric: str) -> dict[int, torch.Tensor]:
        if metric not in self.experts:
            raise ScoresError(f"these scores have no expert metric {metric!r}; they have: "
                              f"{', '.join(self.experts) or 'none'}. Recompute with `minitron importance`.")
        return self.experts[metric]

    def _moe_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"experts.{metric}.{layer}": t for metric, per_layer in self.experts.items()
                   for layer, t in per_layer.items()}
        tensors |= {f"expert_neurons.{layer}": t for layer, t in self.expert_neurons.items()}
        return tensors | {f"shared_neurons.{layer}": t for layer, t in self.shared_neurons.items()}

    @staticmethod
    def _moe_fields(tensors: dict[str, torch.Tensor]) -> dict:
        experts: dict[str, dict[int, torch.Tensor]] = {}
        expert_neurons, shared_neurons = {}, {}
        for key, tensor in tensors.items():
            kind, _, rest = key.partition(".")
            if kind == "experts":
                metric, _, layer = rest.rpartition(".")
                experts.setdefault(metric, {})[int(layer)] = tensor
            elif kind == "expert_neurons":
                expert_neurons[int(rest)] = tensor
            elif kind == "shared_neurons":
                shared_neurons[int(rest)] = tensor
        return {"experts": experts, "expert_neurons": expert_neurons, "shared_neurons": shared_neurons}

    def save(self, folder: str | Path) -> Path:
        tensors = {"hidden": self.hidden.contiguous()}
        tensors |= {f"neurons.{i}": t.contiguous() for i, t in enumerate(self.neurons)}
        tensors |= {f"heads.{i}": t.contiguous() for i, t in enumerate(self.heads)}
        tensors |= {f"layers.{name}": t.contiguous() for name, t in self.layers.items()}
        tensors |= {f"mamba_heads.{i}": t.contiguous() for i, t in self.mamba_heads.items()}
        tensors |= {f"mamba_head_dim.{i}": t.contiguous() for i, t in self.mamba_head_dim.items()}
        tensors |= self._moe_tensors()
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                "num_layers": self.num_layers, **self.meta}
        check_replaceable(folder)
        with atomic_directory(folder) as staging:
            save_file(tensors, str(staging / SCORES_TENSORS))
            atomic_write_text(staging / SCORES_META, json.dumps(meta, indent=2, default=str))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "ImportanceScores":
        folder = Path(require_text(folder, "the scores folder"))
        tensor_path, meta_path = folder / SCORES_TENSORS, folder / SCORES_META
        if not tensor_path.is_file() or not meta_path.is_file():
            raise ScoresNotFoundError(f"{folder} holds no importance scores (expected {SCORES_TENSORS} and "
                              f"{SCORES_META}); create them with `minitron importance --out {folder}`")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensor_path))
            num_layers = int(meta["num_layers"])
            neurons = [tensors[f"neurons.{i}"] for i in range(num_layers)]
            heads = [tensors[f"heads.{i}"] for i in range(num_layers)]
            moe = cls._moe_fields(tensors)
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise ScoresError(f"the scores in {folder} are corrupt or incomplete ({error}); "
                              "recompute them with `minitron importance`") from error
        if meta.get("format_version") != FORMAT_VERSION:
            # Older files hold a fingerprint of another formula: every model would look like another one.
            raise ScoresError(f"the scores in {folder} are in format {meta.get('format_version')}, this minitron "
                              f"reads format {FORMAT_VERSION}; recompute them with `minitron importance`")
        layers = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("layers.")}
        mamba = {kind: {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith(kind + ".")}
                 for kind in ("mamba_heads", "mamba_head_dim")}
        fingerprint = meta.pop("fingerprint")
        return cls(hidden=tensors["hidden"], neurons=neurons, heads=heads, layers=layers,
                   fingerprint=fingerprint, meta=meta, **mamba, **moe)

    def check_matches(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            source = self.meta.get("model", "another model")
            raise ScoresError(
                f"these importance scores were computed on {source} (fingerprint {self.fingerprint}), not on "
                f"this model (fingerprint {fingerprint}). Scores only rank the parts of the model they were "
                "measured on: run `minitron importance` on this model."
            )
