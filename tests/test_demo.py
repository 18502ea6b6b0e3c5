"""The demo end to end on the real built-in teacher (slow: run with `make bench` / `pytest -m slow`)."""
import json

import pytest

from minitron.cli import main


@pytest.mark.slow
def test_quick_demo_runs_the_whole_chain(tmp_path, capfd):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capfd.readouterr()
    assert "%|" not in printed.err + printed.out and "it/s" not in printed.err + printed.out  # --quiet: no bars
    run = json.loads((tmp_path / "run.json").read_text())
    assert all(stage["status"] == "done" for stage in run["stages"])
    teacher, *members = run["members"]
    smallest = members[-1]
    assert smallest["params"]["non_embedding"] <= 0.5 * teacher["params"]["non_embedding"]
    assert (tmp_path / "report.html").stat().st_size > 10_000
    for stage in run["stages"]:
        assert (tmp_path / stage["model"] / "README.md").is_file()
