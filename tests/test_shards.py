"""Prepared data: token shards hold exactly token_blocks' tokens; the cache builds once and never half;
the sampler's position is counted in samples, whatever the number of processes."""
import copy
import json
import signal

import numpy as np
import pytest
import torch

from minitron.cli import main
from minitron.config import DistillConfig
from minitron.data import token_blocks
from minitron.data.cache import cached_shards, prepare_data
from minitron.data.loader import GlobalBatchSampler
from minitron.data.shards import TokenShards, write_shards
from minitron.distill.loop import TrainingInterrupted, distill
from minitron.errors import DataError, MinitronError
from tests.test_distill import _blocks, _student_teacher

DOCS = [f"document {i}: " + " ".join(f"w{i * j % 17}" for j in range(5 + i % 11)) for i in range(80)]


def _txt(tmp_path):
    path = tmp_path / "big.txt"  # above the size at which a .txt file is cut into many documents
    path.write_text("\n\n".join(DOCS * 3) + "\n")
    return str(path)


def _jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return str(path)


def _json(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": d} for d in DOCS]))
    return str(path)


def _parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS}), path)
    return str(path)


def _folder(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for index, document in enumerate(DOCS):
        (folder / ("sub" if index % 3 else ".") / f"{index:03d}.txt").write_text(document)
    return str(folder)


def _hf_local(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "data.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return f"hf:{folder}"


SOURCES = {"txt": _txt, "jsonl": _jsonl, "json": _json, "parquet": _parquet, "folder": _folder,
           "builtin": lambda tmp_path: "builtin:python-topics", "hf": _hf_local}


@pytest.mark.parametrize("kind", SOURCES)
def test_shards_hold_exactly_the_tokens_of_token_blocks(kind, tmp_path, tokenizer):
    spec = SOURCES[kind](tmp_path)
    shards = write_shards(spec, tokenizer, tmp_path / "prepared")
    for split in ("train", "heldout"):
        # Blocks of 2 tokens: the whole split as token_blocks packs it (at most its last token left out).
        expected = token_blocks(spec, tokenizer, 2, 10**7, split=split, allow_fewer=True)
        torch.testing.assert_close(shards.blocks(split, 2, 10**7, allow_fewer=True), expected, rtol=0, atol=0)
        assert shards.num_tokens(split) - expected.numel() < 2
        stream = expected.flatten()
        sevens = shards.blocks(split, 7, len(stream) // 7)
        torch.testing.assert_close(sevens, stream[:sevens.numel()].view(-1, 7), rtol=0, atol=0)
    dataset = shards.dataset("train", 7)
    assert len(dataset) == shards.num_tokens("train") // 7
    torch.testing.assert_close(dataset[len(dataset) - 1], shards.blocks("train", 7, len(dataset))[-1], rtol=0, atol=0)
    torch.testing.assert_close(shards.blocks("all", 5, 60), token_blocks(spec, tokenizer, 5, 60, split="all"),
                               rtol=0, atol=0)
    manifest = shards.manifest
    assert manifest["dtype"] == "uint16" and manifest["source"] == spec
    assert manifest["splits"]["train"]["documents"] > manifest["splits"]["heldout"]["documents"] > 0
    assert manifest["eos_token_id"] == tokenizer.eos_token_id


def test_two_tokenizer_processes_write_the_same_shards(tmp_path, tokenizer):
    spec = _jsonl(tmp_path)
    one = write_shards(spec, tokenizer, tmp_path / "one", num_proc=1)
    two = write_shards(spec, tokenizer, tmp_path / "two", num_proc=2)
    for name in ("train.bin", "heldout.bin", "train.idx", "heldout.idx"):
        assert (one.folder / name).read_bytes() == (two.folder / name).read_bytes()


def test_second_prepare_tokenizes_nothing(tmp_path, tokenizer):
    spec = _jsonl(tmp_path)
    first = prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    stamp = (first.folder / "manifest.json").stat().st_mtime_ns
    second = prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    assert first.built and not second.built and second.folder == first.folder
    assert (second.folder / "manifest.json").stat().st_mtime_ns == stamp
    prepared = prepare_data(str(first.folder), tokenizer)  # a prepared folder is used as it is
    assert not prepared.built and prepared.folder == first.folder
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "other text " * 50}) + "\n")
    assert prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache").folder != first.folder  # content changed


def test_interrupted_tokenization_leaves_nothing_usable(tmp_path, tokenizer):
    path = tmp_path / "broken.jsonl"  # many good documents (several batches written), then a bad line
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 10) + "{not json\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="invalid JSON"):
        prepare_data(str(path), tokenizer, cache_dir=cache)
    assert not any(cache.iterdir())  # no entry, no staging folder left behind
    assert cached_shards(str(path), tokenizer, cache_dir=cache) is None


def test_prepared_data_of_another_tokenizer_is_refused(tmp_path, tokenizer):
    shards = write_shards(_jsonl(tmp_path), tokenizer, tmp_path / "prepared")
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<extra>"])
    with pytest.raises(DataError, match="another tokenizer"):
        prepare_data(str(shards.folder), other)


def test_tokenize_command_writes_a_folder_every_data_option_takes(tmp_path, tokenizer, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "prepared"
    assert main(["tokenize", "--data", _jsonl(tmp_path), "--tokenizer", str(tmp_path / "tok"), "--out", str(out),
                 "--num-proc", "2"]) == 0
    assert "--data" in capsys.readouterr().out
    assert TokenShards(out).manifest["splits"]["train"]["tokens"] > 0
    assert main(["tokenize", "--data", _jsonl(tmp_path), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(out)]) == 2  # exists: needs --overwrite
    with pytest.raises(DataError, match="not prepared data"):
        TokenShards(tmp_path)


# --- the sampler: a disjoint share per rank, a position counted in samples -------------------------------

def _steps(sampler: GlobalBatchSampler, steps: int) -> list[list[int]]:
    """Each step's blocks on this rank (its micro-batches, concatenated)."""
    iterator = iter(sampler)
    return [sum((next(iterator) for _ in range(sampler.grad_accum)), []) for _ in range(steps)]


def test_ranks_read_disjoint_shares_whose_union_is_the_global_batch():
    common = dict(seed=3)
    single = _steps(GlobalBatchSampler(10, micro_batch_size=4, grad_accum=1, rank=0, world_size=1, **common), 9)
    ranks = [_steps(GlobalBatchSampler(10, micro_batch_size=1, grad_accum=2, rank=r, world_size=2, **common), 9)
             for r in range(2)]
    for step, expected in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == expected  # disjoint slices, in order, of the same global batch
    flat = sum(single, [])
    for epoch in range(3):  # each epoch visits every block once, in its own seeded order
        assert sorted(flat[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert flat[:10] != flat[10:20]
    resumed = _steps(GlobalBatchSampler(10, micro_batch_size=2, grad_accum=2, rank=0, world_size=1,
                                        start_sample=20, **common), 4)
    assert sum(resumed, []) == flat[20:36]


def test_resume_with_another_split_of_the_same_global_batch_continues_exactly(tmp_path):
    config = dict(seq_len=16, steps=6, lr=3e-3, warmup_steps=2, eval_every=0, eval_samples=4, save_every=0,
                  chunk_size=10, data_workers=0)
    student, teacher = _student_teacher()
    baseline = []
    distill(student, teacher, _blocks(2, 20), _blocks(3, 4), DistillConfig(micro_batch_size=2, **config),
            on_step=lambda step, record: baseline.append(record["loss"]))
    student, teacher = _student_teacher()
    first = []

    def stop_at_three(step, record):
        first.append(record["loss"])
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        distill(student, teacher, _blocks(2, 20), _blocks(3, 4), DistillConfig(micro_batch_size=2, **config),
                out=tmp_path, on_step=stop_at_three)
    student, teacher = _student_teacher()
    with pytest.raises(MinitronError, match="global batch of 2 .*--micro-batch-size 1 --grad-accum 2"):
        distill(student, teacher, _blocks(2, 20), _blocks(3, 4), DistillConfig(micro_batch_size=1, **config),
                out=tmp_path, resume=True)
    rest = []
    distill(student, teacher, _blocks(2, 20), _blocks(3, 4), DistillConfig(micro_batch_size=1, grad_accum=2, **config),
            out=tmp_path, resume=True, on_step=lambda step, record: rest.append(record["loss"]))
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(baseline), rtol=1e-4, atol=1e-5)


def test_training_reads_shards_block_by_block(tmp_path, tokenizer):
    shards = write_shards(_jsonl(tmp_path), tokenizer, tmp_path / "prepared")
    assert isinstance(shards.tokens("train"), np.memmap)
    student, teacher = _student_teacher()
    records = []
    distill(student, teacher, shards, shards.blocks("heldout", 16, 2, allow_fewer=True),
            DistillConfig(seq_len=16, micro_batch_size=2, steps=3, eval_every=0, eval_samples=2, save_every=0,
                          data_workers=1), on_step=lambda step, record: records.append(record))
    assert len(records) == 3 and all(np.isfinite(r["loss"]) for r in records)
