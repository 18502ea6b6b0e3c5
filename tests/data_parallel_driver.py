"""Run by tests/test_data_parallel.py under torchrun: importance and eval on one process group, the way a
recipe holds one group for every stage; rank 0 writes the scores, every rank writes the loss it got.

    torchrun --nproc-per-node 2 tests/data_parallel_driver.py MODEL CORPUS OUT
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minitron.config import DataConfig, ImportanceConfig  # noqa: E402
from minitron.distill.dist import close_distributed, init_distributed  # noqa: E402
from minitron.jobs import run_eval, run_importance  # noqa: E402

# 3 calibration batches (2 ranks: 2 + 1), the first 2 also scored by layer skipping (one on each rank);
# 5 held-out blocks in batches of 2 (2 + 1 batches).
IMPORTANCE_DATA = dict(samples=6, batch_size=2, seq_len=16)
IMPORTANCE = dict(layer_loss_samples=4)
EVAL_DATA = dict(samples=5, batch_size=2, seq_len=16)


def run(model: str, corpus: str, out: Path) -> dict:
    """Scores into OUT/scores (rank 0), the loss each rank returned into OUT/eval-RANK.json."""
    env = init_distributed("cpu")
    try:
        run_importance(model, str(out / "scores"), DataConfig(data=corpus, **IMPORTANCE_DATA),
                       ImportanceConfig(**IMPORTANCE), device="cpu", overwrite=True)
        result = run_eval(model, DataConfig(data=corpus, **EVAL_DATA), "train", device="cpu")
        (out / f"eval-{env.rank}.json").write_text(json.dumps(result))
    finally:
        close_distributed(env)
    return result


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
