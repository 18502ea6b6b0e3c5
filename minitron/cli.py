"""The `minitron` command. Thin: it parses arguments and calls the typed functions in `minitron.jobs`.

    minitron demo
    minitron importance --model builtin:smollm2-135m --data builtin:python-docs --samples 256 --out scores/
    minitron prune --model builtin:smollm2-135m --scores scores/ --hidden-size 448 --intermediate-size 1024 --out pruned/
    minitron prune --model meta-llama/Llama-3.1-8B --hidden-size 3072 --intermediate-size 9216 --dry-run
    minitron distill --student pruned/ --teacher builtin:smollm2-135m --data builtin:python-docs --steps 100 --out student/
    torchrun --nproc-per-node 2 -m minitron.cli distill ...   # the same command, data parallel
    minitron finetune --model builtin:smollm2-135m --data my.jsonl --steps 100 --out corrected/
    minitron tokenize --data corpus.jsonl --tokenizer builtin:smollm2-135m --out tokens/ --num-proc 8
    minitron inspect pruned/
    minitron eval --model pruned/ --data builtin:python-docs
    minitron search --model builtin:smollm2-135m --scores scores/ --target-params 0.5 --out nas/
    minitron run recipes/smollm2-cpu.yaml          # a family from a recipe; re-run to resume
    minitron report runs/family/          # report.html + model cards of a `minitron run` folder
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex
import sys

from .cliparse import Parser, _ParsedText, add_dataclass_arguments, from_args, note_sibling_options, package_version  # noqa: F401 - API
from .dispatch import DEFAULT_DATA, dispatch, sigterm_as_ctrl_c
from .dryrun import add_fit_options
from .config import (CHAT_TEMPLATE_HELP, TEACHER_ONLY, TEXT_FIELD_HELP, DataConfig, DistillConfig, ImportanceConfig,
                     TargetConfig)
from .errors import MinitronError
from .search.config import GUIDE as SEARCH_GUIDE
from .search.config import SearchConfig
from .verbosity import verbosity


def command_argv(command: str, *settings, **options) -> list[str]:
    """The argv (after `minitron`) of `command` with these settings: dataclass instances (the same ones the
    options are generated from) or mappings of option names (`dest`s) to values. Values equal to the
    command's own defaults are left out; the result parses back to exactly these values.

        command_argv("distill", DistillConfig(steps=10), student="pruned/", teacher="t/", out="s/")

    A value the command line cannot say (an unknown option, None for an option that has a default, a bool
    option that is on by default) is a MinitronError that names it.
    """
    values: dict = {}
    for section in settings:
        values |= dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    values |= options
    parser = _command_parser(command)
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "version")}
    fixed = {dest for dest in set(values) - set(actions) if dest in parser._defaults}
    for dest in fixed:
        if values.pop(dest) != parser._defaults[dest]:
            raise MinitronError(f"`minitron {command}` always uses {dest}={parser._defaults[dest]!r}")
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise MinitronError(f"`minitron {command}` has no option for {', '.join(unknown)}")
    positional, flags = [], []
    for dest, action in actions.items():
        if dest not in values or values[dest] == action.default:
            continue
        words = _option_words(command, action, values[dest])
        (flags if action.option_strings else positional).extend(words)
    return [command, *positional, *flags]


def command_line(command: str, *settings, **options) -> str:
    """`minitron COMMAND ...` as one shell line (each word quoted with shlex); see command_argv."""
    return shlex.join(["minitron", *command_argv(command, *settings, **options)])


def _option_words(command: str, action: argparse.Action, value) -> list[str]:
    flag = action.option_strings[:1]
    if action.nargs == 0:  # a switch (store_true): present or absent
        if value is not True:
            raise MinitronError(f"`minitron {command} {flag[0]}` can only turn it on, not set it to {value!r}")
        return flag
    if value is None:
        raise MinitronError(f"`minitron {command}` cannot set {action.dest} back to None "
                            f"(its default there is {action.default!r})")
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        raise MinitronError(f"`minitron {command}` takes {action.dest} as one word, not {value!r}")
    text = repr(float(value)) if action.type is float else str(value)  # repr: the float that parses back
    if not _parses_back(action, text, value):
        raise MinitronError(f"`minitron {command}` cannot take {action.dest}={value!r}")
    if flag and text.startswith("-"):
        return [f"{flag[0]}={text}"]  # `--data -x` would read -x as an option
    return [*flag, text]


def _parses_back(action: argparse.Action, text: str, value) -> bool:
    try:
        parsed = action.type(text) if action.type is not None else text
        if isinstance(action.type, _ParsedText):  # "94B" and 94000000000 mean the same budget
            parsed, value = action.type.parse(parsed), action.type.parse(value)
    except ValueError:
        return False
    return parsed == value and (not action.choices or parsed in action.choices)


@functools.cache
def _command_parser(command: str) -> argparse.ArgumentParser:
    subcommands = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if command not in subcommands.choices:
        raise MinitronError(f"there is no `minitron {command}` command")
    return subcommands.choices[command]


def _model_options(parser: argparse.ArgumentParser, required: bool = True, help: str = "",
                   forward_only: bool = False) -> None:
    parser.add_argument("--model", required=required, default=None,
                        help="Hub id, local folder, .gguf file, or builtin:smollm2-135m." + help)
    auto = "bfloat16 on a GPU, else the checkpoint's dtype" if forward_only else "the checkpoint's dtype"
    parser.add_argument("--dtype", default="auto", help=f"Weights to load and compute in: auto (default: {auto}; "
                        "GGUF: float32), float32, bfloat16 or float16.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available; "
                        "under torchrun each process's own GPU).")
    if forward_only:
        parser.add_argument("--device-map", default=None, choices=["auto"],
                            help="auto: spread one model over every GPU (accelerate), for models bigger than one "
                            "device; one process, not under torchrun (default: the whole model on --device).")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="Training text (same specs as calibration, or a folder "
                        "from `minitron tokenize`); a deterministic held-out part of it is used for validation. A spec "
                        f"is tokenized once into the cache (--cache-dir). (default: {DEFAULT_DATA})")
    _text_options(parser)
    parser.add_argument("--out", required=True, help="Run folder: checkpoints, metrics.jsonl, then the final model.")
    parser.add_argument("--resume", action="store_true", help="Continue the interrupted run in --out exactly.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the previous run in --out once this one is complete.")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available).")
    _save_dtype_option(parser)


def _text_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-field", default="text", help=f"{TEXT_FIELD_HELP} (default: text)")
    parser.add_argument("--chat-template", default="auto", choices=["auto", "off"],
                        help=f"{CHAT_TEMPLATE_HELP} (default: auto)")


def _save_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the written model: auto (default: the source checkpoint's dtype, whatever "
                             "the computation used), float32, bfloat16 or float16.")


def _hub_options(parser: argparse.ArgumentParser, per_stage: bool = False) -> None:
    where = ("each finished stage's model to REPO-<stage name>" if per_stage else "the finished model folder")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help=f"Upload {where}, with its model card, to this Hugging Face Hub repo (NAME or "
                             "USER/NAME; created if missing) once complete. Token: HF_TOKEN or `hf auth login`.")
    parser.add_argument("--hub-private", action="store_true", help="Create the --push-to-hub repo as private.")


def _verbosity_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """-q/-v before or after the command: the subcommands' copies leave the value alone unless given."""
    default = argparse.SUPPRESS if suppress else "normal"
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet", default=default,
                       help="No progress bars (minitron's, transformers', datasets', the Hub's) and only "
                       "warnings from the libraries; results are still printed.")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose", default=default,
                       help="Also transformers' info logs. TQDM_DISABLE and TRANSFORMERS_VERBOSITY are honoured.")


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minitron", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _verbosity_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="The whole chain on the built-in teacher (recipes/smollm2-cpu.yaml): "
                               "correction, importance, pruning, a search, distillation, evaluation, report.")
    demo.add_argument("--out", default="runs/demo", help="Folder for scores, pruned models and the table.")
    demo.add_argument("--quick", action="store_true", help="Fewer samples: a smoke run of a few minutes.")
    _hub_options(demo, per_stage=True)

    importance = commands.add_parser("importance", help="Score neurons, heads, channels and layers; save them "
                                     "(data-parallel under torchrun).")
    _model_options(importance, forward_only=True)
    importance.add_argument("--out", required=True, help="Folder to write the scores to.")
    importance.add_argument("--overwrite", action="store_true", help="Replace an existing --out folder.")
    add_dataclass_arguments(importance, DataConfig)
    add_dataclass_arguments(importance, ImportanceConfig)

    prune = commands.add_parser("prune", help="Prune to a target architecture; writes a standard HF checkpoint.")
    _model_options(prune, required=False, help=" Required unless --from-search gives it.")
    prune.add_argument("--from-search", metavar="DIR", help="Prune to the winner of `minitron search --out DIR` "
                       "(its target, and its --model, --scores and --depth-metric unless given).")
    prune.add_argument("--scores", help="Scores folder from `minitron importance`.")
    prune.add_argument("--criterion", choices=["magnitude", "random"],
                       help="Baseline criterion instead of --scores (for comparisons).")
    prune.add_argument("--depth-metric", default=None,
                       help="Layer score used when --num-hidden-layers shrinks: lm_loss (default when the scores "
                            "have it), block_influence, or task:NAME (the contiguous block an lm-eval task "
                            "ranked best: `minitron importance --depth-metric task:NAME --task-block K`).")
    prune.add_argument("--expert-metric", default=None, choices=["reap", "weighted_output", "frequency", "random"],
                       help="Expert score used when --num-experts shrinks (mixture-of-experts models): "
                            "weighted_output, the router-weighted expert output norm per token of the data "
                            "(default); reap, the same averaged over the tokens routed to the expert only; "
                            "routing frequency; or random.")
    prune.add_argument("--out", help="Folder for the pruned model.")
    prune.add_argument("--dry-run", action="store_true", help="Print the resulting architecture and size, and the "
                       "memory per process of importance, pruning, distillation and eval (see --nproc); load nothing.")
    prune.add_argument("--overwrite", action="store_true", help="Replace an existing --out folder.")
    _save_dtype_option(prune)
    _hub_options(prune)
    add_dataclass_arguments(prune, TargetConfig)

    distill = commands.add_parser("distill", help="Retrain a pruned student by knowledge distillation.")
    distill.add_argument("--student", required=True, help="Student folder (e.g. from `minitron prune`).")
    distill.add_argument("--teacher", required=True, help="Teacher: hub id, folder, .gguf or builtin:NAME.")
    _run_options(distill)
    _hub_options(distill)
    add_dataclass_arguments(distill, DistillConfig)

    finetune = commands.add_parser("finetune", help="Teacher correction: next-token fine-tuning on your data.")
    finetune.add_argument("--model", required=True, help="Model to fine-tune: hub id, folder, .gguf, builtin:NAME.")
    _run_options(finetune)
    _hub_options(finetune)
    add_dataclass_arguments(finetune, DistillConfig, fixed={name: DistillConfig.__dataclass_fields__[name].default
                                                            for name in TEACHER_ONLY} | {"loss": "ce"})

    tokenize = commands.add_parser("tokenize", help="Tokenize --data once into memory-mapped token shards that "
                                   "every --data option accepts (train / held-out split, manifest.json).")
    tokenize.add_argument("--data", required=True, help=DataConfig.__dataclass_fields__["data"].metadata["help"])
    tokenize.add_argument("--tokenizer", required=True, help="Model whose tokenizer to use: hub id, folder, .gguf "
                          "or builtin:NAME (only its tokenizer is loaded).")
    tokenize.add_argument("--out", required=True,
                          help="Folder for train.bin, heldout.bin, their .idx and manifest.json.")
    tokenize.add_argument("--num-proc", type=int, default=1, help="Tokenizer processes (default: 1).")
    _text_options(tokenize)
    tokenize.add_argument("--overwrite", action="store_true", help="Replace an existing --out folder.")

    inspect = commands.add_parser("inspect", help="Parameter counts and the size of every axis.")
    inspect.add_argument("model", help="Hub id, local folder, config.json, .gguf file or builtin:NAME.")
    inspect.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    evaluate = commands.add_parser("eval", help="Held-out loss and perplexity on a data spec (data-parallel "
                                   "under torchrun).")
    _model_options(evaluate, forward_only=True)
    evaluate.add_argument("--split", default="heldout", choices=["heldout", "train", "all"],
                          help="which documents of --data: heldout (about a tenth, chosen by a deterministic hash of each "
                               "document's position; distill and finetune train on the rest and validate on these), "
                               "train, or all (default: heldout)")
    evaluate.add_argument("--tasks", default=None, help="Comma-separated lm-eval harness tasks (needs lm-eval).")
    evaluate.add_argument("--limit", type=int, default=None, help="Examples per lm-eval task (for quick checks).")
    add_dataclass_arguments(evaluate, DataConfig, samples=64)

    search = commands.add_parser("search", help="Architecture search under a parameter or latency budget.",
                                 description=SEARCH_GUIDE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_options(search)
    search.add_argument("--scores", help="Scores folder from `minitron importance` on --model (default: computed "
                        "on --data with --samples blocks and saved in OUT/scores).")
    search.add_argument("--teacher", default=None, help="Model the candidates are distilled from (default: --model).")
    search.add_argument("--out", help="Folder for search.json, candidates.csv and candidates.md.")
    search.add_argument("--dry-run", "--list", dest="dry_run", action="store_true",
                        help="Only list the candidates that meet the budget, with their sizes (from the config; "
                        "with --scores, depth cuts are counted with the layers the scores keep).")
    search.add_argument("--overwrite", action="store_true", help="Replace an existing --out folder.")
    add_dataclass_arguments(search, SearchConfig)
    add_dataclass_arguments(search, DataConfig, samples=256, seq_len=256)

    run = commands.add_parser("run", help="A model family from a YAML recipe: every stage, resumable, with a report.")
    run.add_argument("recipe", help="Recipe file, e.g. recipes/smollm2-cpu.yaml.")
    run.add_argument("--out", default=None, help="Run folder (default: runs/<recipe name>).")
    run.add_argument("--overwrite", action="store_true", help="Start again; the previous run is replaced once the new one is complete.")
    run.add_argument("--dry-run", action="store_true", help="Print every stage's architecture and size, and what each "
                     "process would hold per stage (see --nproc); only configs are read (a GGUF teacher, such as the "
                     "built-in one, is read whole: its config comes with its weights).")
    run.add_argument("--teacher-config", default=None, metavar="CONFIG_JSON", help="With --dry-run: the teacher's "
                     "config.json (offline; default: the recipe's teacher, from its folder or the Hub).")
    run.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available).")
    _hub_options(run, per_stage=True)

    for command in (prune, run):
        add_fit_options(command)
    for command in (importance, distill, finetune, evaluate, search, run):
        command.add_argument("--cache-dir", default=None, help="Where data specs are tokenized once and reused "
                             "(default: $MINITRON_DATA_CACHE, else ~/.cache/minitron/tokens).")

    report = commands.add_parser("report", help="Write RUN/report.html and the model cards of a `minitron run` folder.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="Run folder (holds run.json).")
    for command in commands.choices.values():
        _verbosity_options(command, suppress=True)
    note_sibling_options(commands.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: the command in pushed model cards
    try:
        with verbosity(args.verbosity), sigterm_as_ctrl_c():
            dispatch(args)
    except MinitronError as error:
        print(f"minitron {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        detail = str(interrupt) or "outputs are written atomically, nothing partial was left"
        print(f"\nminitron {args.command}: {detail}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
