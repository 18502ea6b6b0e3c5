"""The demo end to end on the real built-in teacher (slow: run with `make bench` / `pytest -m slow`)."""
import json

import pytest

from minitron.cli import main


@pytest.mark.slow
def test_quick_demo_prunes_and_distills(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    teacher, *students = rows
    assert all(row["non_embedding"] < 0.55 * teacher["non_embedding"] for row in students)
    distilled = [row for row in students if "distilled_loss" in row]
    assert distilled and all(row["distilled_loss"] < row["loss"] for row in distilled)
