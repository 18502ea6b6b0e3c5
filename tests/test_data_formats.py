"""Data people actually have: CSV/TSV columns, compressed files, folders of shards, chat rows through the
tokenizer's chat template; data and --seq-len mistakes reported before any model loads."""
import copy
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from minitron.cli import main
from minitron.data import iter_documents, token_blocks
from minitron.data.blocks import encode_documents
from minitron.data.cache import cache_key
from minitron.data.checks import check_data, check_seq_len
from minitron.errors import DataError, SettingsError
from tests.tiny import tiny_config, tiny_model, tiny_tokenizer

DOCS = ["first document, with a comma", "second document\nover two lines", "third \"quoted\" one"]
CHATS = [[{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]
         for i in range(3)]
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _jsonl(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def _write_compressed(path, text: str) -> None:
    codec = {".gz": "gzip", ".zst": "zstd"}[path.suffix]
    with pa.output_stream(str(path), compression=codec) as stream:
        stream.write(text.encode())


# --- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, delimiter", [("d.csv", ","), ("d.tsv", "\t")])
def test_csv_and_tsv_read_the_text_column(tmp_path, name, delimiter):
    quoted = [f'"{doc.replace(chr(34), chr(34) * 2)}"' for doc in DOCS]  # quoted values may hold commas, newlines
    (tmp_path / name).write_text(f"id{delimiter}body\n" + "".join(f"{i}{delimiter}{q}\n" for i, q in enumerate(quoted)))
    assert list(iter_documents(str(tmp_path / name), text_field="body")) == DOCS


def test_csv_without_the_column_lists_the_columns(tmp_path):
    (tmp_path / "d.csv").write_text("id,body\n1,hello\n")
    with pytest.raises(DataError, match=r"no 'text' column \(columns found: 'id', 'body'\).*--text-field"):
        check_data(str(tmp_path / "d.csv"))


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.json.gz", "d.jsonl.zst", "d.csv.zst", "d.txt.gz"])
def test_compressed_files_read_like_the_plain_ones(tmp_path, name):
    plain = tmp_path / name.rsplit(".", 1)[0]
    if plain.suffix == ".csv":
        plain.write_text("text\n" + "".join(f'"{d.replace(chr(34), chr(34) * 2)}"\n' for d in DOCS))
    elif plain.suffix == ".txt":
        plain.write_text(DOCS[1])
    else:
        plain.write_text(_jsonl({"text": d} for d in DOCS))
    _write_compressed(tmp_path / name, plain.read_text())
    expected = list(iter_documents(str(plain)))
    assert expected and list(iter_documents(str(tmp_path / name))) == expected


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl({"text": d} for d in DOCS * 50).encode())[:60])
    with pytest.raises(DataError, match="cannot read"):
        list(iter_documents(str(path)))


@pytest.mark.parametrize("kind", ["md", "jsonl", "parquet"])
def test_folder_of_shards_reads_every_file_in_sorted_order(tmp_path, kind):
    shards = [("b", DOCS[1]), ("a", DOCS[0]), ("sub/c", DOCS[2])]
    (tmp_path / "sub").mkdir()
    for stem, doc in shards:
        path = tmp_path / f"{stem}.{kind}"
        if kind == "md":
            path.write_text(doc)
        elif kind == "jsonl":
            path.write_text(_jsonl([{"text": doc}]))
        else:
            pq.write_table(pa.table({"text": [doc]}), path)
    assert list(iter_documents(str(tmp_path))) == DOCS  # a, b, sub/c


def test_folder_of_mixed_formats_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text(_jsonl([{"text": "x"}]))
    pq.write_table(pa.table({"text": ["y"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"mixes formats: 1 json \(a.jsonl\); 1 parquet \(b.parquet\)"):
        check_data(str(tmp_path))


def test_folder_with_an_unsupported_file_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"cannot read \(logo.png\)"):
        check_data(str(tmp_path))


# --- chat -------------------------------------------------------------------------------------------

def test_chat_rows_are_rendered_with_the_chat_template(tmp_path, chat_tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(_jsonl({"messages": chat} for chat in CHATS))
    pq.write_table(pa.table({"messages": CHATS}), tmp_path / "chat.parquet")
    expected = [chat_tokenizer.apply_chat_template(chat, tokenize=False) for chat in CHATS]
    assert expected[0] == "<|user|>\nquestion 0?</s>\n<|assistant|>\nanswer 0.</s>\n"
    for spec in (path, tmp_path / "chat.parquet"):
        assert list(iter_documents(str(spec), tokenizer=chat_tokenizer)) == expected
    blocks = token_blocks(str(path), chat_tokenizer, seq_len=4, num_blocks=3, split="all")
    assert blocks.flatten().tolist() == encode_documents(chat_tokenizer, expected)[:12]


def test_chat_rows_need_a_tokenizer_with_a_chat_template(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(_jsonl({"messages": chat} for chat in CHATS))
    with pytest.raises(DataError, match="has no chat template; use a model whose tokenizer has one"):
        list(iter_documents(str(path), tokenizer=tokenizer))
    with pytest.raises(DataError, match="--chat-template is off"):
        list(iter_documents(str(path), chat_template="off", tokenizer=tokenizer))
    (tmp_path / "bad.jsonl").write_text(_jsonl([{"messages": [{"role": "user"}]}]))
    with pytest.raises(DataError, match="message 0 is not"):
        check_data(str(tmp_path / "bad.jsonl"))


def test_cache_key_follows_the_text_options(tmp_path, chat_tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(_jsonl({"messages": chat} for chat in CHATS))
    other_template = copy.deepcopy(chat_tokenizer)
    other_template.chat_template = TEMPLATE.replace("\n", " ")
    keys = {cache_key(str(path), chat_tokenizer), cache_key(str(path), chat_tokenizer, chat_template="off"),
            cache_key(str(path), chat_tokenizer, text_field="body"), cache_key(str(path), other_template)}
    assert len(keys) == 4


# --- before the model loads -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unloadable(tmp_path_factory):
    """A model folder whose config and tokenizer read fine but whose weights cannot load: a command that
    reports a data or length error for it has not tried to load the model."""
    folder = tmp_path_factory.mktemp("unloadable")
    tiny_config("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not weights")
    (folder / "body.csv").write_text("id,body\n1,hello world\n")
    (folder / "chat.jsonl").write_text(_jsonl({"messages": chat} for chat in CHATS))
    return folder


def _argv(command: str, folder, data: str, tmp_path, seq_len: int = 16) -> list[str]:
    model, out, length = str(folder), str(tmp_path / "out"), ["--seq-len", str(seq_len)]
    if command == "run":
        recipe = {"teacher": model, "data": {"train": data, "seq_len": seq_len},
                  "distill": {"steps": 1}, "stages": [{"name": "s", "target": {"hidden_size": 32}}]}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        return ["run", str(tmp_path / "r.yaml"), "--out", out]
    return {
        "importance": ["importance", "--model", model, "--data", data, "--out", out, *length],
        "eval": ["eval", "--model", model, "--data", data, *length],
        "search": ["search", "--model", model, "--data", data, "--target-params", "0.5", "--out", out, *length],
        "distill": ["distill", "--student", model, "--teacher", model, "--data", data, "--steps", "1", "--out", out,
                    *length],
        "finetune": ["finetune", "--model", model, "--data", data, "--steps", "1", "--out", out, *length],
        "tokenize": ["tokenize", "--data", data, "--tokenizer", model, "--out", out],
    }[command]


COMMANDS = ["importance", "eval", "search", "distill", "finetune", "run", "tokenize"]


@pytest.mark.parametrize("command", COMMANDS)
def test_data_errors_come_before_the_model_loads(unloadable, tmp_path, capsys, command):
    for data, expected in ((unloadable / "body.csv", "no 'text' column (columns found: 'id', 'body')"),
                           (unloadable / "chat.jsonl", "has no chat template"),
                           (unloadable / "missing.jsonl", "does not exist")):
        assert main(_argv(command, unloadable, str(data), tmp_path)) == 2
        error = capsys.readouterr().err
        assert expected in error and "cannot load" not in error and "Traceback" not in error


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "tokenize"])
def test_seq_len_beyond_the_model_is_refused_before_it_loads(unloadable, tmp_path, capsys, command):
    limit = tiny_config("llama").max_position_embeddings
    assert main(_argv(command, unloadable, "builtin:python-docs", tmp_path, seq_len=limit + 1)) == 2
    error = capsys.readouterr().err
    assert f"max_position_embeddings of {unloadable} ({limit})" in error and f"{limit} or less" in error
    assert "cannot load" not in error


def test_seq_len_check_on_a_loaded_model():
    model = tiny_model("llama")  # a GGUF file's config is only known once it loads: checked then
    limit = model.config.max_position_embeddings
    check_seq_len(model, limit)
    with pytest.raises(SettingsError, match=rf"--seq-len {limit + 1} is beyond .* \({limit}\)"):
        check_seq_len(model, limit + 1)
