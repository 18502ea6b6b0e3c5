"""The commands that reproduce a run, step by step, built from what run.json records.

    from minitron.report.commands import reproduce_commands
    lines = reproduce_commands(load_run("runs/family"))     # shell lines: comments and `minitron ...` commands

run.json holds the recipe as run; it is parsed again and every stage's settings come from the same
methods the recipe runner calls (`Stage.importance_configs`, `search_config`, `distill_config`,
`Recipe.correction_config`, `plan_stages` for the models each step reads), and each command is rendered
by `cli.command_line` from the same dataclass fields the command line is generated from. So a printed
command carries every setting the runner used that differs from that command's defaults, and parses
back to exactly those values.

Each command reads and writes the paths `minitron run` did in the run folder (the path after --out is
where the run wrote that step's output).
"""
from __future__ import annotations

from ..cli import command_line
from ..config import TargetConfig
from ..errors import MinitronError
from ..recipe.schema import Recipe, parse_recipe
from .runfolder import Run


class NotReproducible(MinitronError):
    """run.json does not say enough to print commands that redo the run."""


def reproduce_commands(run: Run, until: str | None = None) -> list[str]:
    """The whole family in one command, then every stage step by step (up to stage dir `until`).

    Raises NotReproducible, saying why, when run.json's recipe cannot be read back.
    """
    recipe = recorded_recipe(run)
    from ..recipe.runner import plan_stages  # the runner's own view of which model each step reads
    _, work = plan_stages(recipe, run.root)
    root = str(run.root)
    lines = ["# the whole family; running it again skips finished stages and resumes an interrupted one",
             command_line("run", recipe=f"{root}/recipe.yaml", out=root),
             "# this report and the model cards", command_line("report", run_dir=root),
             "# step by step, what `minitron run` did, with the settings recorded in run.json. Each command",
             "# writes where the run wrote (the path after --out) and refuses a folder that exists: run them",
             "# in a copy of the run folder without its stage folders, or point --out elsewhere to redo one",
             "# step from the run's own inputs. The device is not recorded: add --device to choose one."]
    for entry in run.stages:
        lines += _stage_lines(run, recipe, entry, work.get(entry.get("dir")))
        if entry.get("dir") == until:
            break
    return lines


def recorded_recipe(run: Run) -> Recipe:
    if not run.recipe:
        raise NotReproducible("run.json records no recipe")
    try:
        return parse_recipe(run.recipe, where="the recipe in run.json")
    except MinitronError as error:
        raise NotReproducible(str(error)) from error


def _stage_lines(run: Run, recipe: Recipe, entry: dict, work: dict | None) -> list[str]:
    heading = f"# stage {entry['dir']} ({entry.get('kind', '?')}, {entry.get('status', '?')})"
    if work is None:
        return [heading, f"# {entry['dir']} is not a stage of the recipe in run.json: no command can redo it"]
    folder = run.root / entry["dir"]
    if entry.get("kind") == "correction":
        return [heading, command_line("finetune", recipe.correction_config(), model=work["parent"],
                                      data=recipe.data.train, text_field=recipe.data.text_field,
                                      chat_template=recipe.data.chat_template, out=str(folder / "model"))]
    stage, parent, teacher = work["stage"], work["parent"], work["teacher"]
    data, importance = stage.importance_configs(recipe)
    scores = str(folder / "scores")
    lines = [heading, command_line("importance", data, importance, model=parent, out=scores)]
    if stage.search is not None:
        lines.append(command_line("search", stage.search_config(), data, model=parent, scores=scores,
                                  teacher=teacher, out=str(folder / "search")))
    target = entry.get("target") if stage.search is not None else stage.target
    if not target:
        lines.append("# prune: the target is the search winner's, printed by the search above (this stage "
                     "has not recorded it yet), then distill as below")
    else:
        lines.append(command_line("prune", _target_config(target), model=parent, scores=scores,
                                  depth_metric=stage.depth_metric, expert_metric=stage.prune_expert_metric(),
                                  out=str(folder / "pruned")))
    lines.append(command_line("distill", stage.distill_config(recipe), student=str(folder / "pruned"),
                              teacher=teacher, data=recipe.data.train, text_field=recipe.data.text_field,
                              chat_template=recipe.data.chat_template, out=str(folder / "model")))
    return lines


def _target_config(target: dict) -> TargetConfig:
    layers = target.get("drop_layers")
    return TargetConfig(**{**target, "drop_layers": ",".join(map(str, layers)) if layers else None})
