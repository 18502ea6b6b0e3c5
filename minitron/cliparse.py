"""argparse as minitron's command line wants it: it forgives the spellings people bring and guides the rest.

- No abbreviations: `--hidden` is not silently `--hidden-size` (nor, one day, `--hidden-loss`).
- An unknown `--flag` is refused with the closest options of that command ("did you mean --hidden-size?").
- The Hugging Face spelling of a known option (`--hidden_size`, as in config.json and TrainingArguments)
  is the dash spelling (`--hidden-size`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
import argparse
import difflib
import importlib.metadata
import sys


def package_version() -> str:
    try:
        return importlib.metadata.version("minitron")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, every subcommand's) with the rules above."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.flags_elsewhere: dict[str, list[str]] = {}
        """Options of the other subcommands (flag -> commands), set by `note_sibling_options`."""

    def parse_known_args(self, args=None, namespace=None):
        # Subcommands are parsed by this same method on their own parser, so each checks its own options.
        args = [self._dash_spelling(word) for word in (sys.argv[1:] if args is None else args)]
        namespace, extras = super().parse_known_args(args, namespace)
        unknown = [word for word in extras if word.startswith("--") and word != "--"]
        if unknown:
            self.error("unrecognized arguments: " + " ".join(self._with_suggestion(word) for word in unknown))
        return namespace, extras

    def _dash_spelling(self, word: str) -> str:
        if not word.startswith("--") or "_" not in word:
            return word
        flag, equals, value = word.partition("=")
        dashed = flag.replace("_", "-")
        known = self._option_string_actions
        return dashed + equals + value if flag not in known and dashed in known else word

    def _with_suggestion(self, word: str) -> str:
        flag = word.partition("=")[0]
        if flag.replace("_", "-") in self.flags_elsewhere:  # a real option, of another command
            owners = self.flags_elsewhere[flag.replace("_", "-")]
            return f"{word} (an option of `minitron {'` and `minitron '.join(owners)}`, not of this command)"
        options = [o for o in self._option_string_actions if o.startswith("--")]
        close = difflib.get_close_matches(flag.replace("_", "-"), options, n=3, cutoff=0.6)
        close += [o for o in options if o.startswith(flag) and o not in close][:3 - len(close)]  # abbreviations
        return f"{word} (did you mean {' or '.join(close)}?)" if close else word


def _with_default(text: str, default) -> str:
    """The help text, with "(default: X)" added unless the text already says its default."""
    return text if "(default" in text or "default:" in text else f"{text} (default: {default})"


def note_sibling_options(subparsers: dict[str, argparse.ArgumentParser]) -> None:
    """Tell each subcommand's parser which of the flags it lacks other subcommands take, so that
    `importance --expert-metric` says where that option belongs instead of guessing a near spelling."""
    owners: dict[str, list[str]] = {}
    for name, sub in subparsers.items():
        for flag in sub._option_string_actions:
            if flag.startswith("--"):
                owners.setdefault(flag, []).append(name)
    for name, sub in subparsers.items():
        if isinstance(sub, Parser):
            sub.flags_elsewhere = {flag: names for flag, names in owners.items()
                                   if flag not in sub._option_string_actions}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, fixed: dict | None = None, **defaults) -> None:
    """One `--field-name` option per dataclass field, with the field's help text and default. Fields in
    `fixed` get no option: the command always uses that value (it is the parser's default, for from_args)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__.replace("Config", " settings"))
    parser.set_defaults(**(fixed or {}))
    for f in dataclasses.fields(cls):
        if f.name in (fixed or {}):
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = defaults.get(f.name, f.default)
        if kind is bool:
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true",
                               default=default, help=f.metadata.get("help", ""))
            continue
        # A field with its own parser (token budgets: "94B") takes text; the dataclass parses it.
        kind = _ParsedText(f.metadata["parse"]) if "parse" in f.metadata else kind
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                           help=_with_default(f.metadata.get("help", ""), default))


class _ParsedText:
    """The argparse type of a field its dataclass parses itself: the text stays text (so a bad value is
    the dataclass's one-line error), and `parse` says what it means (for `command_argv`)."""

    __name__ = "str"

    def __init__(self, parse) -> None:
        self.parse = parse

    def __call__(self, text: str) -> str:
        return str(text)


def from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
