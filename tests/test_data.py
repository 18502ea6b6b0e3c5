"""Tests of minitron.data: every source format, hub spec parsing, builtin text, token blocks and splits."""
import json
import re

import pytest
import torch

from minitron.data import (
    is_heldout,
    iter_batches,
    iter_documents,
    parse_hf_spec,
    token_blocks,
)
from minitron.errors import DataError

DOCS = ["first document", "second document\nwith two lines", "third"]


def _marked_docs(count: int) -> list[str]:
    """Documents whose every word names the document, so that any block shows where it came from."""
    return [" ".join([f"m{i}x"] * 12) for i in range(count)]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- sources --------------------------------------------------------------------------------------

def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello world\n\nsecond paragraph\n")
    assert list(iter_documents(str(path))) == ["hello world\n\nsecond paragraph"]


def test_large_txt_file_is_split_into_paragraph_groups(tmp_path):
    paragraphs = [f"paragraph {i} " + " ".join(["word"] * 100) for i in range(40)]
    path = tmp_path / "big.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    docs = list(iter_documents(str(path)))
    assert len(docs) > 5
    assert all(len(d) >= 2000 for d in docs[:-1])
    assert "\n\n".join(docs) == "\n\n".join(paragraphs)


def _sentence_lines(count: int) -> list[str]:
    return [f"Sentence {i} says that pruning keeps what matters and distillation recovers the rest."
            for i in range(count)]


def test_txt_with_one_sentence_per_line_is_cut_at_lines(tmp_path, tokenizer):
    # No blank line at all: once one document, so the held-out split was empty.
    lines = _sentence_lines(600)  # ~50 KB
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    docs = list(iter_documents(str(path)))
    assert len(docs) > 20 and max(len(d) for d in docs) < 2_200
    assert [line for d in docs for line in d.split("\n") if line] == lines  # every line, once, in order
    heldout = token_blocks(str(path), tokenizer, seq_len=64, num_blocks=8, split="heldout", allow_fewer=True)
    assert heldout.shape == (8, 64)


def test_txt_single_huge_line_is_cut_into_pieces(tmp_path):
    line = "".join(f"w{i}," for i in range(8_000))  # ~45 KB, no line break, no space
    path = tmp_path / "line.txt"
    path.write_text(line)
    docs = list(iter_documents(str(path)))
    assert len(docs) > 10 and "".join(d.replace("\n", "") for d in docs) == line


def test_big_txt_keeps_ordinary_long_paragraphs_whole(tmp_path):
    paragraphs = ["\n".join(_sentence_lines(60)), "short one", "\n".join(_sentence_lines(40))]  # ~5 KB, ~3 KB
    path = tmp_path / "big.txt"
    path.write_text("\n\n".join(paragraphs))
    assert list(iter_documents(str(path))) == [paragraphs[0], "\n\n".join(paragraphs[1:])]


def test_folder_of_txt_is_recursive_and_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "notes.md").write_text("markdown is text too")
    (tmp_path / ".hidden.bin").write_text("skipped: hidden")
    assert list(iter_documents(str(tmp_path))) == ["ay", "bee", "markdown is text too", "sea"]


def test_folder_without_data_files(tmp_path):
    (tmp_path / ".DS_Store").write_text("x")
    with pytest.raises(DataError, match="holds no data files"):
        list(iter_documents(str(tmp_path)))


def test_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": d, "id": i} for i, d in enumerate(DOCS)])
    assert list(iter_documents(str(path))) == DOCS


def test_jsonl_custom_text_field(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"content": d} for d in DOCS])
    assert list(iter_documents(str(path), text_field="content")) == DOCS


def test_missing_text_field_names_field_and_keys(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"content": "x", "meta": 1}])
    with pytest.raises(DataError) as error:
        list(iter_documents(str(path)))
    message = str(error.value)
    assert "'text'" in message and "'content'" in message and "'meta'" in message
    assert "--text-field" in message


def test_json_list_and_json_lines(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"text": d} for d in DOCS]))
    as_lines = _write_jsonl(tmp_path / "lines.json", [{"text": d} for d in DOCS])
    assert list(iter_documents(str(as_list))) == DOCS
    assert list(iter_documents(str(as_lines))) == DOCS


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": DOCS, "n": [1, 2, 3]}), path)
    assert list(iter_documents(str(path), text_field="body")) == DOCS
    with pytest.raises(DataError, match="--text-field"):
        list(iter_documents(str(path)))


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(str(tmp_path / "nope.txt")))


# --- encodings ------------------------------------------------------------------------------------

BOM = "\ufeff".encode()


@pytest.mark.parametrize("name, body", [
    ("small.txt", "hello world\n\nsecond paragraph\n"),
    ("big.txt", "\n".join(_sentence_lines(300))),
    ("d.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in DOCS)),
    ("d.json", json.dumps([{"text": d} for d in DOCS])),
], ids=["small.txt", "big.txt", "jsonl", "json"])
def test_bom_is_dropped(tmp_path, tokenizer, name, body):
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    (tmp_path / "plain" / name).write_bytes(body.encode())
    (tmp_path / "bom" / name).write_bytes(BOM + body.encode())
    plain, with_bom = str(tmp_path / "plain" / name), str(tmp_path / "bom" / name)
    assert list(iter_documents(with_bom)) == list(iter_documents(plain))
    assert torch.equal(token_blocks(with_bom, tokenizer, seq_len=4, num_blocks=2, split="all"),
                       token_blocks(plain, tokenizer, seq_len=4, num_blocks=2, split="all"))


def test_bom_in_parquet_text_is_dropped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["\ufeff" + DOCS[0], *DOCS[1:]]}), path)
    assert list(iter_documents(str(path))) == DOCS


LATIN1 = "caf\xe9 au lait"  # \xe9 is byte 3 in Latin-1 and not valid UTF-8 there


@pytest.mark.parametrize("name, body, offset", [
    ("a.txt", LATIN1, 3),
    ("big.txt", "\n".join(_sentence_lines(200)) + "\n" + LATIN1, None),  # streamed line by line
    ("d.jsonl", json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": LATIN1}, ensure_ascii=False), None),
    ("d.json", json.dumps([{"text": LATIN1}], ensure_ascii=False), 14),
], ids=["small.txt", "big.txt", "jsonl", "json"])
def test_text_that_is_not_utf8_is_refused_with_the_offset(tmp_path, name, body, offset):
    path = tmp_path / name
    data = body.encode("latin-1")
    path.write_bytes(data)
    expected = data.index(b"\xe9")
    assert offset is None or offset == expected
    with pytest.raises(DataError, match=rf"not UTF-8 text: byte {expected}\b.*0xe9.*iconv -f latin1 -t utf-8"):
        list(iter_documents(str(path)))


def test_eval_on_latin1_jsonl_is_a_clear_cli_error(tmp_path, capsys):
    from minitron.cli import main
    from tests.tiny import tiny_model, tiny_tokenizer

    tiny_model("llama").save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    data = tmp_path / "latin1.jsonl"
    data.write_bytes((json.dumps({"text": LATIN1}, ensure_ascii=False) + "\n").encode("latin-1"))
    argv = ["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--samples", "1", "--seq-len", "4"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{data} is not UTF-8 text: byte 13 (line 1)" in error and "iconv" in error
    assert "Traceback" not in error


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.docx"
    path.write_text("a,b")
    with pytest.raises(DataError, match=r"unknown extension '\.docx'.*\.jsonl"):
        list(iter_documents(str(path)))


def test_empty_data(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": ""}, {"text": "  "}])
    with pytest.raises(DataError, match="no text"):
        list(iter_documents(str(path)))


def test_unknown_builtin_lists_allowed_names():
    with pytest.raises(DataError, match="builtin:python-docs"):
        list(iter_documents("builtin:nope"))


@pytest.mark.parametrize("spec, expected", [
    ("hf:wikitext:wikitext-2-raw-v1:validation", ("wikitext", "wikitext-2-raw-v1", "validation")),
    ("hf:user/name", ("user/name", None, "train")),
    ("hf:name::test", ("name", None, "test")),
    ("hf:name:cfg", ("name", "cfg", "train")),
])
def test_parse_hf_spec(spec, expected):
    assert parse_hf_spec(spec) == expected


@pytest.mark.parametrize("spec", ["hf:", "hf::cfg", "hf:a:b:c:d"])
def test_parse_hf_spec_errors(spec):
    with pytest.raises(DataError, match="NAME"):
        parse_hf_spec(spec)


def test_hf_local_folder_through_datasets(tmp_path):
    _write_jsonl(tmp_path / "data.jsonl", [{"text": d} for d in DOCS])
    assert list(iter_documents(f"hf:{tmp_path}")) == DOCS


def test_hf_load_failure_is_a_data_error(tmp_path):
    # The tests run offline (conftest), so any hub name fails: the error must say what to check.
    with pytest.raises(DataError, match="network"):
        list(iter_documents("hf:minitron-test/does-not-exist"))


def test_builtin_python_docs():
    docs = list(iter_documents("builtin:python-docs"))
    assert sum(len(d) for d in docs) > 500_000
    topics = list(iter_documents("builtin:python-topics"))
    docstrings = list(iter_documents("builtin:python-docstrings"))
    assert topics and docstrings and not set(topics) & set(docstrings)
    assert docs == topics + docstrings
    assert list(iter_documents("builtin:python-docstrings")) == docstrings  # deterministic


# --- token blocks ---------------------------------------------------------------------------------

def test_token_blocks_shape_and_packing(tmp_path, tokenizer):
    docs = _marked_docs(30)
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs])
    blocks = token_blocks(str(path), tokenizer, seq_len=16, num_blocks=5, split="all")
    assert blocks.shape == (5, 16) and blocks.dtype == torch.long
    stream = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert blocks.flatten().tolist() == stream[:80]


def test_token_blocks_stop_reading_early(tmp_path, tokenizer):
    # A bad record after the first batches is never reached when few blocks are asked for.
    records = [{"text": d} for d in _marked_docs(200)] + [{"wrong": "field"}]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    token_blocks(str(path), tokenizer, seq_len=8, num_blocks=2, split="all")
    with pytest.raises(DataError, match="'wrong'"):
        token_blocks(str(path), tokenizer, seq_len=8, num_blocks=100_000, split="all")


def test_train_and_heldout_are_disjoint(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in _marked_docs(200)])

    def markers(split, num_blocks):
        blocks = token_blocks(str(path), tokenizer, seq_len=32, num_blocks=num_blocks, split=split,
                              heldout_fraction=0.2)
        return {int(m) for row in blocks for m in re.findall(r"m(\d+)x", tokenizer.decode(row))}

    train, heldout = markers("train", 60), markers("heldout", 15)
    assert train and heldout and not train & heldout
    assert all(is_heldout(i, 0.2) for i in heldout)
    assert not any(is_heldout(i, 0.2) for i in train)


def test_heldout_fraction_is_spread_evenly():
    held = [i for i in range(1000) if is_heldout(i, 0.1)]
    assert 90 <= len(held) <= 110
    assert 8 <= sum(1 for i in held if i < 100) <= 12
    assert not is_heldout(0, 0.1)  # a one-document corpus still has training text


def test_too_few_tokens(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in _marked_docs(3)])
    with pytest.raises(DataError, match=r"blocks of 16 tokens, but 1000 were asked.*--samples"):
        token_blocks(str(path), tokenizer, seq_len=16, num_blocks=1000, split="all")


def test_too_few_tokens_says_how_many_there_are_and_what_to_pass(tmp_path, tokenizer):
    path = tmp_path / "small.txt"  # under 8 KB: one document
    path.write_text("a small corpus " * 20)
    tokens = len(tokenizer(path.read_text().strip())["input_ids"]) + 1  # and the EOS
    assert 16 * 17 < tokens < 16 * 20
    with pytest.raises(DataError) as error:
        token_blocks(str(path), tokenizer, seq_len=16, num_blocks=20, split="train")
    assert (f"holds {tokens} tokens in 1 of its 1 documents: 17 blocks of 16 tokens, but 20 were asked; "
            f"use --samples 17 or fewer, --seq-len {tokens // 20} or less, or more data") in str(error.value)
    # The held-out split of a one-document corpus is empty: fewer samples cannot help, so it is not advised.
    with pytest.raises(DataError) as error:
        token_blocks(str(path), tokenizer, seq_len=16, num_blocks=32, split="heldout", allow_fewer=True)
    message = str(error.value)
    assert "holds 0 tokens in 0 of its 1 documents" in message and "at least 1 is needed" in message
    assert "held-out split is whole documents" in message and "more documents" in message
    assert "--samples" not in message


def test_token_blocks_deterministic(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in _marked_docs(100)])
    first = token_blocks(str(path), tokenizer, seq_len=16, num_blocks=20)
    assert torch.equal(first, token_blocks(str(path), tokenizer, seq_len=16, num_blocks=20))


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=1), "at least 2"),
    (dict(num_blocks=0), "at least 1"),
    (dict(split="valid"), "unknown split"),
    (dict(heldout_fraction=1.0), r"\[0, 1\)"),
    (dict(split="heldout", heldout_fraction=0.0), "empty"),
])
def test_token_blocks_validates_arguments(tmp_path, tokenizer, kwargs, match):
    path = tmp_path / "a.txt"
    path.write_text("some text")
    arguments = {"seq_len": 4, "num_blocks": 1, **kwargs}
    with pytest.raises(DataError, match=match):
        token_blocks(str(path), tokenizer, **arguments)


def test_iter_batches():
    blocks = torch.arange(5 * 3).view(5, 3)
    batches = list(iter_batches(blocks, 2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), blocks)
    with pytest.raises(DataError):
        list(iter_batches(blocks, 0))


def test_allow_fewer_returns_every_whole_block(tmp_path, tokenizer):
    from minitron.data import token_blocks
    path = tmp_path / "small.txt"
    path.write_text("a small corpus " * 20)
    blocks = token_blocks(str(path), tokenizer, seq_len=8, num_blocks=10_000, split="all", allow_fewer=True)
    assert 1 <= blocks.shape[0] < 10_000 and blocks.shape[1] == 8


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    from minitron.io import DIR_MODE, FILE_MODE, atomic_directory, atomic_write_text
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "f").write_text("y")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == FILE_MODE
    assert os.stat(tmp_path / "folder").st_mode & 0o777 == DIR_MODE
    assert FILE_MODE & 0o044  # readable by others under the usual umask 022


@pytest.mark.parametrize("name, encoding, advice", [
    ("a.txt", "utf-16", "UTF-16 byte-order mark.*iconv -f utf-16 -t utf-8"),
    ("big.txt", "utf-16", "UTF-16 byte-order mark.*iconv -f utf-16 -t utf-8"),
    ("d.jsonl", "utf-32", "UTF-32 byte-order mark.*iconv -f utf-32 -t utf-8"),
    ("a.txt", "utf-16-le", "byte 1 is a NUL byte.*iconv -f utf-16le -t utf-8"),  # valid UTF-8, read as garbage before
    ("big.txt", "utf-16-le", "byte 1 \\(line 1\\) is a NUL byte.*iconv -f utf-16le"),
    ("d.jsonl", "utf-16-le", "byte 1 \\(line 1\\) is a NUL byte"),
])
def test_utf16_and_utf32_text_is_refused_with_the_right_conversion(tmp_path, name, encoding, advice):
    body = "\n".join(_sentence_lines(200)) if name == "big.txt" else DOCS[0]
    if name.endswith(".jsonl"):
        body = json.dumps({"text": DOCS[0]})
    path = tmp_path / name
    path.write_bytes(body.encode(encoding))
    with pytest.raises(DataError, match=advice):
        list(iter_documents(str(path)))
