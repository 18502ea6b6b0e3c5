"""`--push-to-hub REPO`: upload a finished model folder, with its model card, to the Hugging Face Hub.

    minitron prune ... --out pruned/ --push-to-hub me/smollm2-pruned [--hub-private]
    minitron run recipes/smollm2-cpu.yaml --push-to-hub me/smollm2    # me/smollm2-70pct, me/smollm2-50pct, ...
    from minitron.hub import push_to_hub
    push_to_hub("pruned/", "me/smollm2-pruned", private=True)

As in transformers: the token is huggingface_hub's (HF_TOKEN, or `hf auth login`), the repo is created if it
does not exist, and the upload is one commit through `HfApi.create_repo` + `HfApi.upload_folder`. What can
be checked without the network (the repo id, HF_HUB_OFFLINE, a token) is checked before any work; the
upload itself happens only once the output folder is complete, and only on rank 0 under torchrun. A push
that fails leaves the model where it was written and says how to upload it later.
"""
from __future__ import annotations

from pathlib import Path

from .errors import HubPushError, SettingsError
from .verbosity import is_main_process

# Never uploaded: training checkpoints (optimizer state, often larger than the model) and staging folders.
IGNORED = ["checkpoint/**", ".*", "**/.*"]


def hub_repo_for_stage(repo_id: str, stage_name: str) -> str:
    """The repo of one stage of a recipe run: one model per repo, as the Hub expects."""
    return f"{repo_id}-{stage_name}"


def check_push_to_hub(repo_ids: list[str] | str) -> None:
    """Refuse, before any work, a push that cannot succeed: a malformed repo id, HF_HUB_OFFLINE, no token."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    for repo_id in [repo_ids] if isinstance(repo_ids, str) else repo_ids:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise SettingsError(f"--push-to-hub {repo_id!r} is not a Hub repo id ({error}); write it as NAME or "
                                "USER/NAME (letters, digits, '-', '_', '.'; at most 96 characters)") from None
    if constants.HF_HUB_OFFLINE:
        raise SettingsError("--push-to-hub needs the network, but HF_HUB_OFFLINE is set; unset it, or leave out "
                            "--push-to-hub and upload the folder later with `hf upload REPO OUT`")
    if get_token() is None:
        raise SettingsError("--push-to-hub needs a Hugging Face token with write access: run `hf auth login` or "
                            "set HF_TOKEN")


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, card: dict | None = None,
                commit_message: str = "Upload model made with minitron") -> str:
    """Create `repo_id` (if needed) and upload `folder` (model, tokenizer, minitron.json, README.md model card)
    in one commit; return the commit's URL. `card`: the model card's info (see minitron.report.card), written
    into the folder once the repo's full id (USER/NAME) is known. Any failure is a HubPushError saying where
    the model is."""
    from huggingface_hub import HfApi
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SettingsError(f"{folder} holds no model (no config.json): nothing to push to {repo_id}")
    api = HfApi()
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if card is not None:
            from .report.card import write_model_card
            write_model_card(folder, {"name": repo_id.split("/")[-1], **card, "repo_id": repo_id})
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message=commit_message, ignore_patterns=IGNORED)
    except Exception as error:  # noqa: BLE001 — whatever the Hub or the network says, the model is on disk
        later = f"hf upload {repo_id} {folder}" + (" --private" if private else "")
        raise HubPushError(f"pushing to the Hub repo {repo_id} failed ({type(error).__name__}: "
                           f"{_first_line(error)}). The model is safe on disk at {folder}; upload it later "
                           f"with `{later}`") from error
    return commit.commit_url


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False) -> dict[str, str]:
    """Push the model of every finished stage of a `minitron run` folder to REPO-<stage>, each with its
    card (rewritten to load from its repo). Returns {stage folder: commit URL}."""
    from .report.card import model_card_info
    from .report.runfolder import load_run
    run = load_run(run_dir)
    pushed = {}
    for stage in run.stages:
        model_dir = run.path(stage.get("model"))
        if stage.get("status") != "done" or model_dir is None or not (model_dir / "config.json").is_file():
            continue
        pushed[str(model_dir)] = push_to_hub(model_dir, hub_repo_for_stage(repo_id, stage["name"]), private=private,
                                             card=model_card_info(run, stage),
                                             commit_message=f"Upload {stage['dir']} of a minitron run")
    return pushed


def planned_repos(repo_id: str, recipe: str | Path | None = None) -> list[str]:
    """The repos a command will push to: `repo_id`, or for a recipe run one per stage (checked up front)."""
    if recipe is None:
        return [repo_id]
    from .recipe import load_recipe
    loaded = load_recipe(recipe)
    names = (["correction"] if loaded.correction is not None else []) + [stage.name for stage in loaded.stages]
    return [hub_repo_for_stage(repo_id, name) for name in names]


def command_without_push(argv: list[str]) -> str:
    """The command line that made a model, for its card: as typed, less the --push-to-hub options."""
    import shlex
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--push-to-hub":
            skip = True
        elif not word.startswith(("--push-to-hub=", "--hub-private")):
            words.append(word)
    return shlex.join(["minitron", *words])


# --- the CLI's side: args are the parsed options of prune, distill, finetune, run or demo ---

def check_command_push(args) -> None:
    """--push-to-hub: what can fail without the network fails now, before any work."""
    if getattr(args, "dry_run", False):
        raise SettingsError("--dry-run writes no model: leave out --push-to-hub")
    recipe = {"run": getattr(args, "recipe", None), "demo": "smollm2-cpu"}.get(args.command)
    check_push_to_hub(planned_repos(args.push_to_hub, recipe))


def push_command_output(args, card: dict | None = None) -> None:
    """--push-to-hub: upload the finished output with its model card (`card`: the info of a one-command
    model; None: every stage of a run folder). Rank 0 only, as every write under torchrun."""
    if not getattr(args, "push_to_hub", None) or not is_main_process():
        return
    if card is None:
        out = args.out or f"runs/{Path(args.recipe).stem}"  # run_recipe's default run folder
        pushed = push_run(out, args.push_to_hub, private=args.hub_private)
    else:
        card = {**card, "commands": [command_without_push(args.argv)]}
        pushed = {args.out: push_to_hub(args.out, args.push_to_hub, private=args.hub_private, card=card)}
    for folder, url in pushed.items():
        print(f"pushed {folder} to the Hub: {url}")
