"""The README's Python snippet, as written there, on a tiny model: it saves a folder the CLI can use."""
import re
from pathlib import Path

import torch

from minitron.cli import main
from minitron.loading import save_checkpoint
from tests.tiny import tiny_model, tiny_tokenizer

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = "\n\n".join(f"Paragraph {i}: importance scores rank the channels a pruned model keeps, {i * 3 % 7}."
                   for i in range(200))


def readme_snippet() -> str:
    """The first ```python block of the README."""
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "the README has no ```python block"
    return match.group(1)


def test_the_readme_snippet_saves_a_folder_the_cli_uses(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    save_checkpoint(tiny_model("llama"), tiny_tokenizer(), tmp_path / "teacher", {"stage": "test"})
    (tmp_path / "corpus.txt").write_text(TEXT)
    code = readme_snippet()
    # The built-in teacher and corpus become tiny ones; each replacement must find its text, so a README
    # edit that this test no longer covers fails here instead of passing unseen.
    tiny = {'"builtin:smollm2-135m"': repr(str(tmp_path / "teacher")),
            '"builtin:python-docs"': repr(str(tmp_path / "corpus.txt")),
            "seq_len=256, num_blocks=128": "seq_len=16, num_blocks=8",
            '{"hidden_size": 432, "intermediate_size": 864}': '{"hidden_size": 36, "intermediate_size": 32}'}
    for written, replacement in tiny.items():
        assert code.count(written) == 1, f"the README snippet no longer holds {written}"
        code = code.replace(written, replacement)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    assert main(["eval", "--model", "width/", "--data", str(tmp_path / "corpus.txt"), "--samples", "4",
                 "--seq-len", "16", "--batch-size", "4", "--quiet"]) == 0
    assert '"perplexity"' in capsys.readouterr().out
    assert main(["prune", "--model", str(tmp_path / "teacher"), "--scores", "scores/", "--intermediate-size", "16",
                 "--out", "smaller/", "--quiet"]) == 0  # the snippet's scores serve the CLI too
