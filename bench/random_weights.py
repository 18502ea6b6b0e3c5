"""A model folder with a config's shapes and freshly initialised weights (transformers' own init, seed 0).

For speed and memory checks where the real weights cannot travel (a lent GPU machine that reaches no
hub, with a size limit on what is sent): every kernel runs on the same shapes, so tokens/s and peak
memory are the real model's, while losses are meaningless and must not be reported.

    python bench/random_weights.py CONFIG_DIR OUT [--dtype bfloat16]

CONFIG_DIR holds config.json (and the tokenizer files, which are copied); OUT gets a checkpoint every
minitron command takes as --model, with minitron.json saying the weights are random.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_dir")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from minitron import save_checkpoint
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.config_dir)
    save_checkpoint(model, tokenizer, args.out, {"source": f"random weights in the shapes of {args.config_dir}",
                                                 "random_weights": True})
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()):,} random parameters ({args.dtype})")


if __name__ == "__main__":
    main()
