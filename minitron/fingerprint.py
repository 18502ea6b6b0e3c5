"""A short digest that identifies a model's architecture and weights, cheaply.

Used to refuse importance scores computed on another model. It hashes the architecture sizes, every
parameter's name and shape, and a strided sample of each parameter's values (4096 at most), so it costs
milliseconds even for billions of parameters and still tells a fine-tuned copy from its parent.

It identifies the weights, not how they are held: the same model in fp32 or bf16, on CPU or GPU, has
one fingerprint. The sampled values are hashed as bfloat16, the coarsest dtype a model is loaded in;
fp32 -> bf16 is one round-to-nearest-even, whether it happens at load time or here, so both give the
same bits. (An fp32 checkpoint loaded in fp16 is the exception: fp32 -> fp16 -> bf16 rounds twice.)
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

ARCH_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "num_hidden_layers")
_SAMPLES_PER_PARAM = 4096


def architecture_summary(config) -> dict:
    from .arch.base import text_config  # a multimodal checkpoint: its language model's sizes
    sizes = text_config(config)
    return {name: getattr(config if name == "model_type" else sizes, name, None) for name in ARCH_FIELDS}


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256(json.dumps(architecture_summary(model.config), sort_keys=True).encode())
    for name, param in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        if param.device.type == "meta":
            continue
        flat = param.detach().reshape(-1)
        stride = max(1, flat.numel() // _SAMPLES_PER_PARAM)
        sample = flat[::stride][:_SAMPLES_PER_PARAM].to(device="cpu", dtype=torch.bfloat16)
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
