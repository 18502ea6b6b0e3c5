"""File-level search: `minitron search` loads the model, scores and data, searches, and writes the tables.

    minitron search --model builtin:smollm2-135m --scores scores/ --target-params 0.5 --budget-on non_embedding \
        --data builtin:python-docs --out nas/
    minitron search --model meta-llama/Llama-3.1-8B --target-params 4.5e9 --dry-run   # config only

    from minitron.search import SearchConfig, run_search
    run_search("builtin:smollm2-135m", "nas/", SearchConfig(target_params=0.5), scores="scores/",
               teacher=None, data=DataConfig(seq_len=256))
"""
from __future__ import annotations

import math
from pathlib import Path

from ..arch import get_adapter
from ..config import DataConfig, ImportanceConfig
from ..data.cache import load_blocks
from ..data.checks import check_seq_len
from ..distill.dist import distributed_session, on_main
from ..errors import MinitronError, ScoresError, SettingsError
from ..importance.scores import ImportanceScores
from ..io import atomic_directory
from ..loading import check_output_folder, load_model, resolve_device, resolve_dtype
from ..outputs import require_text
from .candidates import Architecture
from .config import SearchConfig
from .rank import plan, search
from .tables import write_outputs
from ..arch.base import text_config

SCORES_SUBDIR = "scores"


def list_candidates(model: str, config: SearchConfig, *, device: str | None = None,
                    dtype: str | None = None, scores: str | ImportanceScores | None = None) -> dict:
    """The budget and the candidates that would be scored, from the model's config alone (no weights).

    A latency budget builds random-weight models of the candidates on `device` to measure them. scores (a
    folder or loaded scores): depth cuts are counted with the layers they keep; without them, as if the
    last layers went (in a stack of mixed layer kinds, the pruned model's size can then differ).
    """
    from ..jobs import load_config
    model_config = load_config(model)
    get_adapter(model_config)  # candidates are pruned models: the family needs an adapter
    loaded = ImportanceScores.load(scores) if isinstance(scores, str) else scores
    layers = text_config(model_config).num_hidden_layers
    if loaded is not None and loaded.num_layers != layers:
        raise ScoresError(f"the scores are of a model with {loaded.num_layers} layers, {model!r} has {layers}: "
                          "give the scores `minitron importance` computed for this model")
    budget, candidates, counts = plan(model_config, config, device=resolve_device(device),
                                      dtype=resolve_dtype(dtype), scores=loaded)
    source = Architecture.of(model_config)
    rows = [{"architecture": c.architecture.as_dict(), "target": c.architecture.target(source),
             "cut": c.architecture.cut_kind(source), "params": c.params.as_dict(), "latency_ms": c.latency_ms,
             "memory_gb": c.memory_gb}
            for c in candidates]
    return {"model": model, "source": source.as_dict(), "budget": budget.as_dict(), "counts": counts,
            "candidates": rows}


def run_search(model: str, out: str, config: SearchConfig, *, scores: str | None, teacher: str | None,
               data: DataConfig, overwrite: bool = False, device: str | None = None, dtype: str | None = None,
               progress: bool = True) -> dict:
    """Search architectures of `model` under `config`'s budget; write search.json, candidates.csv and
    candidates.md into `out`, and return search.json's content.

    scores: a scores folder from `minitron importance` (None: computed on `data` and saved in out/scores).
    teacher: the model candidates are distilled from (None: `model` itself). data: the text for held-out
    scoring and candidate distillation (data.seq_len tokens per block; data.batch_size for evaluation).
    """
    require_text(model, "--model")
    if not isinstance(config, SearchConfig):
        raise SettingsError(f"config must be a SearchConfig with a budget, got {type(config).__name__}")
    data = data if data is not None else DataConfig()
    for value, flag in ((scores, "--scores"), (teacher, "--teacher")):
        if value is not None:
            require_text(value, flag)
    check_output_folder(out, overwrite, inputs=[model, scores, teacher, data.data])
    from ..jobs import check_data_config
    check_data_config(model, data)
    if teacher is not None:
        check_seq_len(teacher, data.seq_len)
    loaded_scores = ImportanceScores.load(scores) if scores else None
    if config.target_params is not None:
        list_candidates(model, config, scores=loaded_scores)  # an impossible budget fails here, before any weights
    # One process group for the search under torchrun (candidates are distilled data-parallel), each rank
    # on its own device.
    with distributed_session(device) as env:
        device = str(env.device)
        # Candidates are trained briefly: fp32 weights unless --dtype says otherwise (AdamW on bf16 weights stalls).
        dtype = dtype if dtype not in (None, "auto") else "float32"
        loaded, tokenizer = load_model(model, dtype=dtype, device=device)
        check_seq_len(loaded, data.seq_len)
        get_adapter(loaded)
        teacher_model = load_model(teacher, dtype=dtype, device=device)[0] if teacher else None
        if teacher_model is not None:
            check_seq_len(teacher_model, data.seq_len)
        teacher_rows = None if teacher_model is None else text_config(teacher_model.config).vocab_size
        if teacher_rows is not None and teacher_rows != text_config(loaded.config).vocab_size:
            raise MinitronError(f"teacher and model vocabularies differ ({teacher_rows} vs "
                                f"{text_config(loaded.config).vocab_size}): logit distillation needs the same tokenizer")
        heldout = load_blocks(data.data, tokenizer, data.seq_len, config.heldout_samples, split="heldout",
                              text_field=data.text_field, allow_fewer=True, chat_template=data.chat_template)
        train = None
        if config.distills:
            blocks = max(math.ceil(config.candidate_tokens / data.seq_len), config.candidate_batch_size)
            train = load_blocks(data.data, tokenizer, data.seq_len, blocks,
                                split="train", text_field=data.text_field, allow_fewer=True,
                                chat_template=data.chat_template)
        computed_scores = loaded_scores is None
        if computed_scores:
            from ..jobs import compute_scores
            loaded_scores = compute_scores(loaded, tokenizer, data, ImportanceConfig(), progress=progress)
        result = search(loaded, tokenizer, loaded_scores, config, heldout=heldout, train=train,
                        teacher=teacher_model, progress=progress, batch_size=data.batch_size)
        payload = {"model": model, "teacher": teacher or model, "scores": scores or str(Path(out) / SCORES_SUBDIR),
                   "data": data.data, "seq_len": data.seq_len, "depth_metric": config.depth_metric,
                   "expert_metric": config.expert_metric,
                   **result.to_dict()}

        def write() -> dict:
            # Everything is written in a staging folder that replaces `out` only once the search is complete.
            with atomic_directory(out) as staging:
                if computed_scores:
                    loaded_scores.save(staging / SCORES_SUBDIR)
                write_outputs(staging, payload)
            return payload

        # Under torchrun every rank searched (candidates are distilled together); rank 0 writes, and its
        # results are every rank's.
        return on_main(env, write)
