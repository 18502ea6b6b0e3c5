"""What each `minitron` command does once its options are parsed (`cli.py` builds the parser)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from .cliparse import from_args
from .config import DataConfig, DistillConfig, ImportanceConfig, TargetConfig
from .dryrun import layout_from_args
from .errors import MinitronError
from .verbosity import is_main_process

DEFAULT_DATA = DataConfig().data


def _print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:,}" if type(value) is int else f"{name:<{width}}  {value}")


def _print_dry_run(summary: dict) -> None:
    from .arch import get_adapter, text_config
    config, before, after = summary["config"], summary["params_before"], summary["params_after"]
    sizes = text_config(config)  # a multimodal checkpoint: its language model's
    rows = [(key, getattr(sizes, key)) for key in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                    "num_key_value_heads", "head_dim", "num_hidden_layers")]
    layout = get_adapter(config).mamba
    if layout is not None:  # hybrid Mamba stacks: the mixers' sizes after the cut
        heads, head_dim, groups, state_size = layout.sizes(sizes)
        rows.append(("Mamba heads x head dim", f"{heads} x {head_dim} ({groups} groups, state {state_size})"))
    rows += [("params total", f"{after.total:,} ({after.total / before.total:.1%} of {before.total:,})"),
             ("params non-embedding", f"{after.non_embedding:,} ({after.non_embedding / before.non_embedding:.1%})")]
    if summary["target"].moe is not None:  # mixture of experts: what one token uses
        moe = summary["target"].moe
        rows[1:1] = [("experts (per token)", f"{moe.num_experts} ({moe.num_experts_per_tok})"),
                     ("expert width", moe.expert_width)]
        rows.append(("params active", f"{after.active:,} ({after.active / before.active:.1%} of {before.active:,})"))
    _print_table(rows)


def _tokenize(args: argparse.Namespace) -> None:
    from .data.checks import check_data
    from .data.shards import write_shards
    from .loading import check_output_folder, load_tokenizer
    check_output_folder(args.out, args.overwrite, inputs=[args.data, args.tokenizer])
    check_data(args.data, args.text_field, chat_template=args.chat_template, tokenizer_of=args.tokenizer)
    shards = write_shards(args.data, load_tokenizer(args.tokenizer), args.out, text_field=args.text_field,
                          num_proc=args.num_proc, chat_template=args.chat_template)
    sizes = ", ".join(f"{name} {split['tokens']:,} tokens in {split['documents']:,} documents"
                      for name, split in shards.manifest["splits"].items())
    print(f"prepared data written to {args.out}: {sizes} ({shards.manifest['seconds']} s); use --data {args.out}")


def dispatch(args: argparse.Namespace) -> None:
    from . import jobs
    from .hub import check_command_push, push_command_output
    if getattr(args, "cache_dir", None):  # read by every data path, in this process and its children
        from .data.cache import CACHE_ENV
        os.environ[CACHE_ENV] = args.cache_dir
    if getattr(args, "push_to_hub", None):
        check_command_push(args)
    if args.command == "demo":
        from .demo import run_demo
        run_demo(args.out, quick=args.quick)
        push_command_output(args)
    elif args.command == "importance":
        out = jobs.run_importance(args.model, args.out, from_args(DataConfig, args), from_args(ImportanceConfig, args),
                                  dtype=args.dtype, device=args.device, overwrite=args.overwrite,
                                  device_map=args.device_map)
        if is_main_process():
            print(f"scores written to {out}")
    elif args.command == "prune":
        if args.from_search:
            from .search.commands import prune_args_from_search
            prune_args_from_search(args)
        if args.model is None:
            raise MinitronError("give --model (or --from-search DIR, a `minitron search` folder)")
        target = from_args(TargetConfig, args).as_target()
        if not target:
            raise MinitronError("give at least one target: --hidden-size, --intermediate-size, "
                                "--num-attention-heads, --num-key-value-heads, --num-hidden-layers or --drop-layers")
        result = jobs.run_prune(args.model, args.out, target, scores=args.scores, criterion=args.criterion,
                                depth_metric=args.depth_metric, expert_metric=args.expert_metric,
                                dry_run=args.dry_run, dtype=args.dtype,
                                device=args.device, overwrite=args.overwrite, save_dtype=args.save_dtype)
        if args.dry_run:
            from .dryrun import describe_prune_memory
            _print_dry_run(result)
            print()
            print(describe_prune_memory(result, layout_from_args(args), micro_batch_size=args.dry_micro_batch,
                                        seq_len=args.dry_seq_len))
        else:
            print(f"pruned model written to {args.out}: {result['params_after']['total']:,} parameters "
                  f"({result['params_after']['total'] / result['params_before']['total']:.1%} of the source)")
            push_command_output(args, {"kind": "prune", "teacher": args.model, "target": target,
                                       "importance": result["scores_meta"]})
    elif args.command in ("distill", "finetune"):
        from .distill.job import run_distill
        config = from_args(DistillConfig, args)
        student, teacher = (args.student, args.teacher) if args.command == "distill" else (args.model, None)
        if args.data is None:
            args.data = DEFAULT_DATA
            print(f"minitron {args.command}: no --data given, training on {DEFAULT_DATA} (CPython's documentation);"
                  " pass --data for your own text", file=sys.stderr)
        record = run_distill(student, teacher, args.data, args.out, config, text_field=args.text_field,
                             chat_template=args.chat_template, resume=args.resume, overwrite=args.overwrite,
                             device=args.device, save_dtype=args.save_dtype)
        final = record["final"]
        if is_main_process():  # every rank returns the same record; one line says so
            print(f"{args.command}: model written to {args.out}; final validation: "
                  + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k.startswith("val_")))
        push_command_output(args, {"kind": args.command, "teacher": teacher or student, "data": args.data,
                                   **({"parent": student, "distilled_from": teacher} if teacher else {})})
    elif args.command == "tokenize":
        _tokenize(args)
    elif args.command == "inspect":
        info = jobs.inspect_model(args.model)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            params = info.pop("params")
            _print_table([*info.items(), *((f"params {k}", v) for k, v in params.items())])
    elif args.command == "eval":
        result = jobs.run_eval(args.model, from_args(DataConfig, args), args.split, dtype=args.dtype,
                               device=args.device, device_map=args.device_map)
        if not is_main_process():
            return
        if args.tasks:
            result["lm_eval"] = jobs.run_lm_eval(args.model, args.tasks, batch_size=args.batch_size,
                                                 limit=args.limit, device=args.device)["tasks"]
        print(json.dumps(result, indent=2))
    elif args.command == "search":
        from .search.commands import search_command
        search_command(args)
    elif args.command == "run":
        from .recipe import runner
        if args.dry_run:
            from .dryrun import describe_recipe_memory
            print(describe_recipe_memory(args.recipe, layout_from_args(args), teacher_config=args.teacher_config,
                                         micro_batch_size=args.dry_micro_batch, seq_len=args.dry_seq_len))
        else:
            members = runner.format_members(runner.run_recipe(args.recipe, args.out, overwrite=args.overwrite,
                                                              device=args.device))
            if is_main_process():  # under torchrun, one table rather than one per process
                print(members)
            push_command_output(args)
    elif args.command == "report":
        from .report import build_report, write_model_cards
        path = build_report(args.run_dir)
        cards = write_model_cards(args.run_dir)
        print(f"report written to {path}" + (f"; {len(cards)} model card(s) updated" if cards else ""))


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (a cluster preempting the job) stops a command as Ctrl-C does: training checkpoints first,
    a recipe saves its progress, and the exit code says it did not finish."""
    def handler(signum, frame):
        raise KeyboardInterrupt("stopped by SIGTERM")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
