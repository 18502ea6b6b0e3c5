"""`minitron run recipe.yaml`: a whole model family from one teacher, resumable stage by stage.

    minitron run recipes/smollm2-cpu.yaml                 # writes runs/smollm2-cpu/
    minitron run recipes/smollm2-cpu.yaml --dry-run       # every stage's architecture and size, no work
    minitron run smollm2-cpu                              # a shipped recipe, by name
    torchrun --nproc-per-node 8 -m minitron run recipe.yaml  # one process group for every stage; rank 0 writes
    from minitron.recipe import run_recipe
    run_recipe("recipes/smollm2-cpu.yaml", "runs/family")

Run folder: recipe.yaml (the recipe as run), run.json (state, rewritten atomically after every step),
one folder per stage (00-correction, 01-<name>, ...: scores/, search/, pruned/, model/) and report.html.
Running the same recipe again skips finished stages (matched by fingerprint), resumes an interrupted
one, and redoes a changed stage with everything after it, from the first of its steps (importance,
search, prune, distill) whose settings changed: a new search budget reuses the stage's importance scores.
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from ..data.checks import check_data, check_seq_len
from ..distill.dist import DistEnv, distributed_session, on_main
from ..errors import SettingsError
from ..io import atomic_write_text, replace_directory
from ..outputs import check_output, is_empty_folder, pending_folder, require_text
from ..jobs import load_config
from .plan import describe_plan, format_members, plan_recipe
from .schema import Recipe, load_recipe, recipe_path
from .stages import evaluate_member, run_correction, run_prune_distill
from .state import RUN_FILE, RunState, fingerprint, model_stamp, new_stage_entry, now, step_fingerprints, say

__all__ = ["RecipeInterrupted", "describe_plan", "format_members", "plan_recipe", "plan_stages", "run_recipe"]


RECORD_FILES = ("minitron.json", "scores.json", "search.json")


class RecipeInterrupted(KeyboardInterrupt):
    """Ctrl-C during a recipe: progress is saved and the same command resumes it."""


def run_recipe(recipe: Recipe | str | Path, out: str | Path | None = None, *, overwrite: bool = False,
               device: str | None = None, check_targets: bool = True, report: bool = True) -> dict:
    """Run (or resume) every stage of `recipe`, evaluate each family member, build the report.

    Returns the content of run.json. Ctrl-C stops cleanly (distillation checkpoints first) and raises
    RecipeInterrupted; running the same recipe into the same folder again continues from there.
    """
    if not isinstance(recipe, (Recipe, str, Path)):
        raise SettingsError(f"recipe must be a recipe file, a shipped recipe's name or a Recipe, got "
                            f"{type(recipe).__name__}")
    source = recipe_path(recipe) if isinstance(recipe, (str, Path)) else None
    recipe = load_recipe(recipe) if source else recipe
    if out is None:
        if source is None:
            raise SettingsError("give the run folder (out=...) for a recipe that is not read from a file")
        out = Path("runs") / source.stem
    run_dir = Path(require_text(out, "--out"))
    command = f"minitron run {source} --out {run_dir}" if source else "the same run_recipe(...) call"
    # One process group for the whole run (under torchrun), every stage on this rank's device; rank 0
    # writes run.json, models and reports while the others wait (on_main).
    with distributed_session(device) as env:
        work_dir, data = on_main(env, lambda: _start_run(recipe, source, run_dir, overwrite, check_targets))
        state = RunState(work_dir, data, writes=env.is_main)
        _, work = plan_stages(recipe, work_dir)
        device = str(env.device)
        try:
            for entry in state.stages:
                if entry["status"] == "done":
                    say(f"skipping {entry['dir']} (done)")
                    continue
                _run_stage(entry, work[entry["dir"]], recipe, state, device, env)
            evaluate_members(recipe, state, work, device, env)
        except KeyboardInterrupt as interrupt:
            state.save()
            running = next((s["dir"] for s in state.stages if s["status"] != "done"), "the evaluation")
            detail = str(interrupt).split(";")[0] or "Ctrl-C"  # the loop's own advice (--resume) is not for recipes
            raise RecipeInterrupted(f"interrupted in {running} ({detail}); progress is saved in {work_dir}. "
                                    f"Run the same command again to resume: {command}") from interrupt
        on_main(env, lambda: _finish_run(work_dir, run_dir, report))
    return state.data


def _start_run(recipe: Recipe, source: Path | None, run_dir: Path, overwrite: bool,
               check_targets: bool) -> tuple[Path, dict]:
    """Rank 0: the work folder, checked inputs, run.json reconciled with the recipe; returns both."""
    work_dir = _work_folder(run_dir, overwrite, [source, recipe.teacher, recipe.data.train, recipe.data.eval_spec])
    for spec in sorted({recipe.data.train, recipe.data.eval_spec}):
        # before reconcile removes a changed stage: a typo must not cost it
        check_data(spec, recipe.data.text_field, chat_template=recipe.data.chat_template, tokenizer_of=recipe.teacher)
    if check_targets:
        teacher_config = load_config(recipe.teacher)
        for seq_len, where in ((recipe.data.seq_len, "data.seq_len"), (recipe.eval.seq_len, "eval.seq_len")):
            if seq_len is not None:
                check_seq_len(teacher_config, seq_len, f"the recipe's {where}")
        plan_recipe(recipe, teacher_config)  # impossible targets fail here, before any work
    state = RunState.open(work_dir)
    planned, _ = plan_stages(recipe, work_dir)
    state.data = {"recipe": recipe.raw, "teacher": recipe.teacher, "data": asdict(recipe.data),
                  "stages": state.stages, "members": state.members}
    state.reconcile(planned)
    _forget_missing_models(state)
    atomic_write_text(work_dir / "recipe.yaml", _recipe_as_run(recipe, source))
    state.save()
    return work_dir, state.data


def _finish_run(work_dir: Path, run_dir: Path, report: bool) -> None:
    if work_dir != run_dir:
        _rebase_records(work_dir, run_dir)
        replace_directory(work_dir, run_dir)  # the previous run goes only now, with the new one complete
    if report:
        _report(run_dir)


def _work_folder(run_dir: Path, overwrite: bool, inputs: list) -> Path:
    """The folder the run works in: `run_dir`, or a pending folder that replaces it once complete.

    --overwrite on a folder that holds a run starts the new run beside it; the same command without
    --overwrite then resumes that pending run (not the old one), as the interruption message says.
    """
    check_output(run_dir, inputs=inputs, replace=overwrite)
    pending = pending_folder(run_dir)
    resumes_pending = not overwrite and (pending / RUN_FILE).is_file()
    if resumes_pending:
        check_output(run_dir, inputs=inputs, replace=True)  # completing it will replace run_dir
        say(f"continuing the run started with --overwrite in {pending}; it replaces {run_dir} once complete")
        return pending
    if not overwrite:
        return run_dir
    shutil.rmtree(pending, ignore_errors=True)
    if is_empty_folder(run_dir):
        return run_dir
    pending.mkdir(parents=True)
    return pending


def _recipe_as_run(recipe: Recipe, source: Path | None) -> str:
    """The text of RUN/recipe.yaml, which `minitron run RUN/recipe.yaml --out RUN` resumes from.

    The source text (comments kept) when its paths mean the same files from any folder; otherwise the
    parsed recipe with the teacher and data as resolved beside the source, since read from the run
    folder its relative paths would name other files (and redo every stage, or fail).
    """
    if source is None:
        return yaml.safe_dump(recipe.raw, sort_keys=False)
    raw = copy.deepcopy(recipe.raw)
    data = raw.get("data") or {}
    resolved = {"train": recipe.data.train, "eval": recipe.data.eval}
    given = {key: data[key] for key in resolved if key in data}
    if raw["teacher"] == recipe.teacher and all(value == resolved[key] for key, value in given.items()):
        return source.read_text()
    raw["teacher"] = recipe.teacher
    if given:
        raw["data"] = {**data, **{key: resolved[key] for key in given}}
    return (f"# {source.resolve()} as run, its relative paths resolved beside it\n"
            + yaml.safe_dump(raw, sort_keys=False))


def _rebase_records(work_dir: Path, run_dir: Path) -> None:
    """Point the paths that records hold (a stage's source, scores, student) at the folder's final place."""
    for name in RECORD_FILES:
        for path in work_dir.rglob(name):
            text = path.read_text()
            if str(work_dir) in text:
                atomic_write_text(path, text.replace(str(work_dir), str(run_dir)))


def plan_stages(recipe: Recipe, run_dir: Path) -> tuple[list[dict], dict]:
    """Each stage's folder, parent and fingerprint, and the absolute model specs it works on."""
    teacher_fp = fingerprint(model_stamp(recipe.teacher))
    planned, work = [], {}
    parent_shown, parent_spec, parent_fp = recipe.teacher, recipe.teacher, teacher_fp
    data = {"train": recipe.data.train, "seq_len": recipe.data.seq_len, "text_field": recipe.data.text_field}
    if recipe.data.chat_template != "auto":  # only when set: stages of runs made before the option stay done
        data["chat_template"] = recipe.data.chat_template
    if recipe.correction is not None:
        settings = {"kind": "correction", "data": data, "distill": asdict(recipe.correction_config())}
        entry = {"name": "correction", "kind": "correction", "dir": "00-correction", "parent": recipe.teacher,
                 "fingerprint": fingerprint(settings, teacher_fp)}
        entry["steps"] = {"model": entry["fingerprint"]}
        planned.append(entry)
        work[entry["dir"]] = {"stage": None, "parent": recipe.teacher, "teacher": None, "fingerprint": entry["fingerprint"]}
        parent_shown, parent_spec, parent_fp = "00-correction/model", str(run_dir / "00-correction/model"), \
            entry["fingerprint"]
    teacher = (parent_shown, parent_spec, parent_fp)  # the (corrected) original teacher
    for index, stage in enumerate(recipe.stages, start=1):
        data_config, importance = stage.importance_configs(recipe)
        source = stage.teacher_source(recipe)
        distill_teacher = teacher if source == "teacher" else (parent_shown, parent_spec, parent_fp)
        importance_settings = {**asdict(importance), "samples": data_config.samples,
                               "batch_size": data_config.batch_size}
        settings = {"kind": "prune_distill", "name": stage.name, "data": data, "importance": importance_settings,
                    "target": stage.target, "search": stage.search, "depth_metric": stage.depth_metric,
                    "distill": asdict(stage.distill_config(recipe)), "distill_from": source,
                    "distill_teacher": distill_teacher[2]}
        if stage.expert_metric is not None:  # only when set: the fingerprints of runs without it stay the same
            settings["expert_metric"] = stage.expert_metric
        entry = {"name": stage.name, "kind": "prune_distill", "dir": f"{index:02d}-{stage.name}",
                 "parent": parent_shown, "target": stage.target, "fingerprint": fingerprint(settings, parent_fp),
                 "steps": step_fingerprints(settings, parent_fp)}
        planned.append(entry)
        work[entry["dir"]] = {"stage": stage, "parent": parent_spec, "teacher": distill_teacher[1],
                              "teacher_shown": distill_teacher[0], "fingerprint": entry["fingerprint"]}
        parent_shown, parent_spec, parent_fp = f"{entry['dir']}/model", str(run_dir / entry["dir"] / "model"), \
            entry["fingerprint"]
    work["teacher"] = {"fingerprint": teacher_fp}
    return planned, work


def _forget_missing_models(state: RunState) -> None:
    """A stage recorded as done whose model folder is gone is redone, and so is every later stage."""
    for index, entry in enumerate(state.stages):
        if entry["status"] == "done" and not (state.run_dir / entry["model"] / "config.json").is_file():
            say(f"{entry['dir']} is recorded as done but its model is missing: redoing it and every later stage")
            for later in state.stages[index:]:
                state.remove_stage_folder(later["dir"])
                later.update(new_stage_entry(later))
            return


def _run_stage(entry: dict, work: dict, recipe: Recipe, state: RunState, device: str, env: DistEnv) -> None:
    say(f"== {entry['dir']}" + (" (resuming)" if entry["status"] == "running" else ""))
    entry["status"], entry["started"] = "running", entry.get("started") or now()
    state.save()
    started = time.perf_counter()
    try:
        if entry["kind"] == "correction":
            run_correction(entry, recipe, state.run_dir, device=device, env=env)
        else:
            entry["teacher"] = work["teacher_shown"]
            run_prune_distill(entry, work["stage"], recipe, state.run_dir, parent=work["parent"],
                              teacher=work["teacher"], device=device, env=env, save=state.save)
    finally:
        entry["seconds"] = round(entry.get("seconds", 0.0) + time.perf_counter() - started, 2)
        state.save()
    entry["status"], entry["finished"] = "done", now()
    state.save()


def evaluate_members(recipe: Recipe, state: RunState, work: dict, device: str, env: DistEnv) -> None:
    """Teacher and every stage's model on the held-out data; members already measured are kept.

    Every rank evaluates (the held-out loss is data-parallel where minitron.eval makes it so)."""
    settings = {"eval": asdict(recipe.eval), "data": recipe.data.eval_spec, "text_field": recipe.data.text_field,
                "seq_len": recipe.data.seq_len}
    if recipe.data.chat_template != "auto":
        settings["chat_template"] = recipe.data.chat_template
    previous = {m.get("name"): m for m in state.members}
    members = [("teacher", recipe.teacher, recipe.teacher, work["teacher"]["fingerprint"])]
    members += [(s["name"], str(state.run_dir / s["model"]), s["model"], s["fingerprint"]) for s in state.stages]
    heldout, results = None, []
    for name, spec, shown, model_fp in members:
        member_fp = fingerprint(settings, model_fp)
        if previous.get(name, {}).get("fingerprint") == member_fp:
            results.append(previous[name])
            continue
        say(f"[evaluation] {name}: held-out loss" + (" and throughput" if recipe.eval.throughput else ""))
        member, heldout = evaluate_member(name, spec, shown, recipe, heldout, device=device, env=env)
        results.append({**member, "fingerprint": member_fp})
        state.data["members"] = results + [m for m in state.members if m.get("name") not in
                                           {r["name"] for r in results}]
        state.save()
    state.data["members"] = results
    state.save()


def _report(run_dir: Path) -> Path | None:
    try:
        from ..report import build_report, write_model_cards
    except ImportError:
        # minitron.report is optional here only so that a partial install still trains its models.
        say("report skipped: minitron.report is not available")
        return None
    cards = write_model_cards(run_dir)  # README.md of every finished stage's model, from run.json
    path = build_report(run_dir)
    say(f"report: {path} ({len(cards)} model card(s) written)")
    return path
