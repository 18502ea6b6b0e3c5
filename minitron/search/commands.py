"""`minitron search` on the command line, and `minitron prune --from-search DIR`: the winner of a search
as the settings of the `minitron prune` command that prunes to it."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

from ..cli import command_line, from_args
from ..config import DataConfig, TargetConfig
from ..errors import MinitronError
from .config import SearchConfig
from .job import list_candidates, run_search
from .tables import SEARCH_JSON, candidates_markdown, listing_markdown


def search_command(args: argparse.Namespace) -> None:
    config = from_args(SearchConfig, args)
    if args.dry_run:
        print(listing_markdown(list_candidates(args.model, config, device=args.device, dtype=args.dtype,
                                               scores=args.scores)))
        return
    if args.out is None:
        raise MinitronError("--out is required (or pass --dry-run to list the candidates)")
    result = run_search(args.model, args.out, config, scores=args.scores, teacher=args.teacher,
                        data=from_args(DataConfig, args), overwrite=args.overwrite, device=args.device,
                        dtype=args.dtype)
    print(candidates_markdown(result))
    print(f"search written to {args.out}. Prune to the winner (then distill it fully) with\n  "
          + command_line("prune", winner_settings(result), out=str(Path(args.out) / "pruned"))
          + f"\nor, the same: minitron prune --from-search {shlex.quote(args.out)} --out DIR")


def winner_settings(search: dict) -> dict:
    """The `minitron prune` settings (dests to values) that prune to a search.json's winner."""
    winner = search.get("winner") if isinstance(search, dict) else None
    if not isinstance(winner, dict) or not isinstance(winner.get("target"), dict):
        raise MinitronError("search.json names no winner with a target: was the search complete?")
    return {"model": search.get("model"), "scores": search.get("scores"), "depth_metric": search.get("depth_metric"),
            "expert_metric": search.get("expert_metric"),
            **dataclasses.asdict(TargetConfig(**winner["target"]))}


def prune_args_from_search(args: argparse.Namespace) -> None:
    """Fill `args` from a search folder: the winner's target, and the model and scores it was scored with."""
    if TargetConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TargetConfig)}).as_target():
        raise MinitronError("--from-search gives the target: leave out --hidden-size and the other target options")
    path = Path(args.from_search) / SEARCH_JSON
    try:
        search = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MinitronError(f"cannot read {path} ({error}); --from-search takes the --out folder of "
                            "`minitron search`") from None
    for dest, value in winner_settings(search).items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
