"""Recipes: a model family described in YAML, parsed into dataclasses and validated before any work.

    from minitron.recipe import load_recipe
    recipe = load_recipe("recipes/smollm2-cpu.yaml")
    recipe.stages[0].distill_config(recipe)      # the DistillConfig that stage trains with

Every section is checked key by key: an unknown key anywhere is an error that names the key and the
allowed keys, and every value is checked against the type of the setting it fills (YAML reads `5e-5`
as a string; numbers written that way are accepted for numeric settings).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import DataConfig, DistillConfig, ImportanceConfig
from ..data.chat import check_chat_template_mode
from ..errors import InputNotFoundError, MinitronError, SettingsError
from ..prune.moe import EXPERT_METRICS
from ..prune.target import TARGET_KEYS, check_layer_indices, parse_layer_list
from ..importance.task_depth import task_of

TOP_KEYS = ("teacher", "description", "data", "importance", "correction", "distill", "distill_from", "stages",
            "eval")
DATA_KEYS = ("train", "eval", "seq_len", "text_field", "chat_template")
STAGE_KEYS = ("name", "target", "search", "importance", "distill", "distill_from", "depth_metric", "expert_metric")
EVAL_KEYS = ("samples", "batch_size", "seq_len", "throughput")
THROUGHPUT_KEYS = ("batch_size", "seq_len", "new_tokens", "repeats")
IMPORTANCE_DATA_KEYS = ("samples", "batch_size")  # the rest of DataConfig comes from the data section
DISTILL_FROM = ("teacher", "parent")
RESERVED_NAMES = ("teacher", "correction")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The one copy of the shipped recipes: recipes/ beside the package (a source checkout or an editable
# install, as `make` sets up), found by name as well as by path.
SHIPPED_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class RecipeData:
    train: str = "builtin:python-docs"
    eval: str | None = None  # None: the held-out split of `train`
    seq_len: int = 512
    text_field: str = "text"
    chat_template: str = "auto"  # see minitron.data.chat

    @property
    def eval_spec(self) -> str:
        return self.eval or self.train


@dataclass
class Throughput:
    batch_size: int = 1
    seq_len: int = 128
    new_tokens: int = 32
    repeats: int = 3


@dataclass
class EvalSpec:
    samples: int = 32
    batch_size: int = 8
    seq_len: int | None = None  # None: the data section's seq_len
    throughput: Throughput | None = field(default_factory=Throughput)


@dataclass
class Stage:
    """One prune + distill step of the chain: a fixed `target` or a `search`, then distillation."""

    name: str
    target: dict | None = None
    search: dict | None = None
    importance: dict = field(default_factory=dict)
    distill: dict = field(default_factory=dict)
    distill_from: str | None = None
    depth_metric: str | None = None  # picks the layers kept; the search prunes its candidates with it too
    expert_metric: str | None = None  # picks the routed experts kept (MoE); the search prunes with it too

    def importance_configs(self, recipe: Recipe, task_block: int | None = None) -> tuple[DataConfig, ImportanceConfig]:
        """task_block: the layers this stage's target drops (parent depth - target depth), known once the
        parent is; with a `task:NAME` depth metric the importance step then ranks blocks of that size."""
        settings = {**recipe.importance, **self.importance}
        if task_of(self.depth_metric) and task_block:
            settings |= {"depth_metric": self.depth_metric, "task_block": task_block}
        data_part = {k: v for k, v in settings.items() if k in IMPORTANCE_DATA_KEYS}
        data = DataConfig(data=recipe.data.train, text_field=recipe.data.text_field,
                          chat_template=recipe.data.chat_template, seq_len=recipe.data.seq_len,
                          **{"samples": 64, **data_part})
        return data, ImportanceConfig(**{k: v for k, v in settings.items() if k not in IMPORTANCE_DATA_KEYS})

    def distill_config(self, recipe: Recipe) -> DistillConfig:
        return _distill_config(_overridden(recipe.distill, self.distill), recipe.data, f"stage {self.name!r} distill")

    def search_config(self):
        from ..search import SearchConfig
        return SearchConfig(**{"expert_metric": self.expert_metric, "depth_metric": self.depth_metric,
                               **(self.search or {})})

    def prune_expert_metric(self) -> str | None:
        """The expert metric the stage prunes with (a search section's own wins, as in its candidates)."""
        return self.search_config().expert_metric if self.search is not None else self.expert_metric

    def prune_depth_metric(self) -> str | None:
        """The depth metric the stage prunes with (a search section's own wins, as in its candidates)."""
        return self.search_config().depth_metric if self.search is not None else self.depth_metric

    def teacher_source(self, recipe: Recipe) -> str:
        return self.distill_from or recipe.distill_from


@dataclass
class Recipe:
    teacher: str
    stages: list[Stage]
    data: RecipeData = field(default_factory=RecipeData)
    importance: dict = field(default_factory=dict)
    correction: dict | None = None
    distill: dict = field(default_factory=dict)
    distill_from: str = "teacher"
    eval: EvalSpec = field(default_factory=EvalSpec)
    description: str = ""
    raw: dict = field(default_factory=dict)  # the parsed YAML, as recorded in run.json

    def correction_config(self) -> DistillConfig | None:
        if self.correction is None:
            return None
        return _distill_config({"loss": "ce", **self.correction}, self.data, "correction")


def recipe_path(spec: str | Path) -> Path:
    """A recipe file, or the name of a shipped one (`smollm2-cpu` is recipes/smollm2-cpu.yaml)."""
    if spec is None or not str(spec).strip():
        raise SettingsError("no recipe given: pass a recipe file such as recipes/smollm2-cpu.yaml")
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise SettingsError(f"recipe {spec} is a folder; pass a recipe file such as recipes/smollm2-cpu.yaml")
    shipped = SHIPPED_RECIPES / f"{spec}.yaml"
    if not path.suffix and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_RECIPES.glob("*.yaml"))
    raise InputNotFoundError(f"recipe {spec} does not exist" + (f"; shipped recipes: {', '.join(names)}" if names else ""))


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is a MinitronError naming where it is."""
    path = recipe_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"recipe {path} is not valid YAML: {error}") from error
    recipe = parse_recipe(raw, where=str(path))
    resolve_relative_paths(recipe, path.resolve().parent)
    return recipe


def resolve_relative_paths(recipe: Recipe, folder: Path) -> None:
    """Relative paths in a recipe mean the recipe file's folder, wherever `minitron run` starts from.

    Data specs without `hf:` / `builtin:` are paths. The teacher is a path when it starts with ./ or
    ../ or names something beside the recipe; otherwise it stays a Hub id (org/name).
    """
    teacher = recipe.teacher
    if _is_relative(teacher) and (teacher.startswith(("./", "../")) or (folder / teacher).exists()):
        recipe.teacher = str(folder / teacher)
    recipe.data.train = _data_path(recipe.data.train, folder)
    if recipe.data.eval is not None:
        recipe.data.eval = _data_path(recipe.data.eval, folder)


def _is_relative(spec: str) -> bool:
    return ":" not in spec and not spec.startswith("~") and not Path(spec).is_absolute()


def _data_path(spec: str, folder: Path) -> str:
    return str(folder / spec) if _is_relative(spec) else spec


def parse_recipe(raw, where: str = "recipe") -> Recipe:
    top = _mapping(raw, where, TOP_KEYS)
    if not isinstance(top.get("teacher"), str) or not top["teacher"]:
        raise SettingsError(f"{where}: 'teacher' is required (a hub id, folder, .gguf file or builtin:NAME)")
    data = RecipeData(**_typed(_mapping(top.get("data") or {}, f"{where}: data", DATA_KEYS), RecipeData,
                               f"{where}: data"))
    _require_positive(data.seq_len, f"{where}: data.seq_len")
    _checked(lambda: check_chat_template_mode(data.chat_template), f"{where}: data.chat_template")
    recipe = Recipe(
        teacher=top["teacher"], stages=[], data=data,
        importance=_importance_section(top.get("importance"), f"{where}: importance"),
        correction=_correction_section(top.get("correction"), f"{where}: correction"),
        distill=_typed(_mapping(top.get("distill") or {}, f"{where}: distill", _names(DistillConfig)),
                       DistillConfig, f"{where}: distill"),
        distill_from=_distill_from(top.get("distill_from", "teacher"), f"{where}: distill_from"),
        eval=_eval_section(top.get("eval"), f"{where}: eval"),
        description=str(top.get("description") or ""), raw=raw)
    recipe.stages = _stages(top.get("stages"), recipe, where)
    if recipe.correction is not None:
        recipe.correction_config()  # validates the merged settings now
    return recipe


# --- sections ------------------------------------------------------------------------------------

def _stages(raw, recipe: Recipe, where: str) -> list[Stage]:
    if not isinstance(raw, list) or not raw:
        raise SettingsError(f"{where}: 'stages' must be a non-empty list of stages (each with a name and a "
                            "target or a search)")
    stages, seen = [], set()
    for index, item in enumerate(raw):
        here = f"{where}: stages[{index}]"
        section = _mapping(item, here, STAGE_KEYS)
        name = section.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
            raise SettingsError(f"{here}: 'name' must be letters, digits, '.', '_' or '-' (and not "
                                f"{' or '.join(RESERVED_NAMES)}), got {name!r}")
        if name in seen:
            raise SettingsError(f"{here}: two stages are named {name!r}; names must be unique")
        seen.add(name)
        here = f"{where}: stage {name!r}"
        if ("target" in section) == ("search" in section):
            raise SettingsError(f"{here}: give exactly one of 'target' (fixed sizes) or 'search' (a budget)")
        stage = Stage(
            name=name, target=_target(section["target"], here) if "target" in section else None,
            search=_search(section["search"], here) if "search" in section else None,
            importance=_importance_section(section.get("importance"), f"{here} importance"),
            distill=_typed(_mapping(section.get("distill") or {}, f"{here} distill", _names(DistillConfig)),
                           DistillConfig, f"{here} distill"),
            distill_from=_distill_from(section["distill_from"], f"{here} distill_from")
            if "distill_from" in section else None,
            depth_metric=_optional_str(section.get("depth_metric"), f"{here} depth_metric"),
            expert_metric=_choice(section.get("expert_metric"), EXPERT_METRICS, f"{here} expert_metric"))
        stage.distill_config(recipe)
        _checked(lambda stage=stage: _check_task_depth(stage), here)
        _checked(lambda stage=stage: stage.importance_configs(recipe), f"{here} importance")
        stages.append(stage)
    return stages


def _check_task_depth(stage: Stage) -> None:
    """A task depth metric ranks blocks of one size: the stage needs a fixed depth to cut to."""
    if not task_of(stage.depth_metric):
        return
    if stage.target is None or "num_hidden_layers" not in stage.target or "drop_layers" in stage.target:
        raise SettingsError(f"depth_metric {stage.depth_metric} picks the block of layers a fixed target drops: "
                            "give the stage a target with num_hidden_layers (not a search, not drop_layers)")


def _target(raw, where: str) -> dict:
    section = _mapping(raw, f"{where} target", TARGET_KEYS)
    if not section:
        raise SettingsError(f"{where} target: give at least one of {', '.join(TARGET_KEYS)}")
    target = {}
    for key, value in section.items():
        if key == "drop_layers":
            target[key] = _layer_list(value, f"{where} target.drop_layers")
        else:
            target[key] = _coerce(value, int, f"{where} target.{key}")
            _require_positive(target[key], f"{where} target.{key}")
    return target


def _layer_list(value, where: str) -> list[int]:
    if isinstance(value, str):
        return _checked(lambda: parse_layer_list(value), where)
    if isinstance(value, list):
        return _checked(lambda: check_layer_indices(value), where)
    raise SettingsError(f"{where}: give layer indices as a list [15, 16] or a string '15-30', got {value!r}")


def _search(raw, where: str) -> dict:
    try:
        from ..search import SearchConfig
    except ImportError as error:
        raise SettingsError(f"{where} uses 'search', but minitron.search is not available ({error})") from error
    section = _typed(_mapping(raw or {}, f"{where} search", _names(SearchConfig)), SearchConfig, f"{where} search")
    _checked(lambda: SearchConfig(**section), f"{where} search")
    return section


def _importance_section(raw, where: str) -> dict:
    allowed = (*IMPORTANCE_DATA_KEYS, *_names(ImportanceConfig))
    section = _mapping(raw or {}, where, allowed)
    typed = _typed({k: v for k, v in section.items() if k in IMPORTANCE_DATA_KEYS}, DataConfig, where)
    typed |= _typed({k: v for k, v in section.items() if k not in IMPORTANCE_DATA_KEYS}, ImportanceConfig, where)
    return typed


def _correction_section(raw, where: str) -> dict | None:
    if raw is None or raw is False:
        return None
    section = _typed(_mapping(raw, where, _names(DistillConfig)), DistillConfig, where)
    if section.get("loss", "ce") != "ce":
        raise SettingsError(f"{where}: teacher correction trains on next-token loss; loss must be ce "
                            f"(or left out), got {section['loss']!r}")
    return section


def _eval_section(raw, where: str) -> EvalSpec:
    section = _mapping(raw or {}, where, EVAL_KEYS)
    throughput = section.pop("throughput", {})
    spec = EvalSpec(**_typed(section, EvalSpec, where))
    for name in ("samples", "batch_size", "seq_len"):
        _require_positive(getattr(spec, name), f"{where}.{name}")
    if throughput is None or throughput is False:
        spec.throughput = None
    else:
        here = f"{where}.throughput"
        spec.throughput = Throughput(**_typed(_mapping(throughput, here, THROUGHPUT_KEYS), Throughput, here))
        for name in THROUGHPUT_KEYS:
            _require_positive(getattr(spec.throughput, name), f"{here}.{name}")
    return spec


def _distill_config(settings: dict, data: RecipeData, where: str) -> DistillConfig:
    return _checked(lambda: DistillConfig(**{"seq_len": data.seq_len, **settings}), where)


def _overridden(defaults: dict, settings: dict) -> dict:
    """A stage's distill settings over the recipe's: a stage's budget (steps or tokens) replaces the
    recipe's budget whichever way that was given (a run takes one or the other, not both)."""
    if "steps" in settings or "tokens" in settings:
        defaults = {k: v for k, v in defaults.items() if k not in ("steps", "tokens")}
    return {**defaults, **settings}


def _distill_from(value, where: str) -> str:
    if value not in DISTILL_FROM:
        raise SettingsError(f"{where} must be {' or '.join(DISTILL_FROM)}, got {value!r}")
    return value


# --- generic checks ------------------------------------------------------------------------------

def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _mapping(raw, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where} must be a mapping of settings, got {type(raw).__name__}: {raw!r}")
    for key in raw:
        if key not in allowed:
            raise SettingsError(f"unknown key {key!r} in {where}; allowed keys: {', '.join(allowed)}")
    return dict(raw)


def _typed(section: dict, cls, where: str) -> dict:
    """Each value checked (and numbers converted) against the type hint of the field it sets."""
    hints = typing.get_type_hints(cls)
    # Fields with their own parser (token budgets: 94B, 2.5k) are converted by it.
    parsers = {f.name: f.metadata["parse"] for f in dataclasses.fields(cls) if "parse" in f.metadata}
    typed = {}
    for key, value in section.items():
        if key in parsers:
            typed[key] = _checked(functools.partial(parsers[key], value), f"{where}.{key}")
        else:
            typed[key] = _coerce(value, hints[key], f"{where}.{key}")
    return typed


def _coerce(value, kind, where: str):
    optional = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
    if optional:
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{where} must be true or false, got {value!r}")
    if kind in (int, float) and not isinstance(value, bool):
        number = _number(value)
        if number is not None and kind is float:
            return float(number)
        if number is not None and float(number).is_integer():
            return int(number)
        raise SettingsError(f"{where} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
    if kind is str and isinstance(value, str):
        return value
    if kind not in (int, float, str, bool):
        return value  # structured fields are checked by their own section parser
    raise SettingsError(f"{where} must be {kind.__name__}, got {value!r}")


def _number(value) -> int | float | None:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _choice(value, choices: tuple[str, ...], where: str) -> str | None:
    if value is None or value in choices:
        return value
    raise SettingsError(f"{where} must be one of {', '.join(choices)}, got {value!r}")


def _optional_str(value, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise SettingsError(f"{where} must be a string, got {value!r}")


def _require_positive(value, where: str) -> None:
    if value is not None and value <= 0:
        raise SettingsError(f"{where} must be positive, got {value}")


def _checked(build, where: str):
    """Run a dataclass's own validation and say which part of the recipe it was about."""
    try:
        return build()
    except MinitronError as error:
        raise SettingsError(f"{where}: {error}") from error
