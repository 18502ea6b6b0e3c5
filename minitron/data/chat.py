"""The text of one record: its text field, or its chat turns rendered with the tokenizer's chat template.

Chat data is rows like `{"messages": [{"role": "user", "content": "..."}, ...]}` (the format of TRL and
of the Hub's chat datasets). With `chat_template="auto"` (the default) such a row becomes the text
`tokenizer.apply_chat_template(messages, tokenize=False)` gives, exactly what the model sees at
inference, special tokens written out; it is then tokenized like any document. A row is chat when the
text field holds a list of messages, or when it has no text field but a `messages` field.
`chat_template="off"` refuses chat rows rather than guessing how to flatten them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from minitron.data.textfiles import strip_bom
from minitron.errors import DataError, SettingsError

CHAT_TEMPLATE_MODES = ("auto", "off")
MESSAGES_FIELD = "messages"


class ChatNeedsTokenizerError(DataError):
    """A chat row was met where no tokenizer was given to render it (see `checks.check_data`)."""


def check_chat_template_mode(mode: str) -> str:
    if mode not in CHAT_TEMPLATE_MODES:
        raise SettingsError(f"--chat-template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {mode!r}: "
                            "auto renders rows with a 'messages' list through the tokenizer's chat template, "
                            "off refuses them")
    return mode


def chat_template_digest(tokenizer, mode: str) -> str | None:
    """What in the tokenizer decides rendered chat text (for cache keys): its template, when chat is rendered."""
    if mode == "off" or tokenizer is None:
        return None
    template = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(str(template).encode()).hexdigest()[:16] if template else "none"


@dataclass(frozen=True)
class RecordText:
    """How a record becomes a document: which field holds the text, and whether chat rows are rendered."""

    text_field: str = "text"
    chat_template: str = "auto"
    tokenizer: Any = None

    def __post_init__(self) -> None:
        check_chat_template_mode(self.chat_template)

    def column(self, available: list[str]) -> str:
        """The column to read from a table with these columns (Parquet): the text field, else `messages`."""
        if self.text_field in available:
            return self.text_field
        if self.chat_template == "auto" and MESSAGES_FIELD in available:
            return MESSAGES_FIELD
        return self.text_field

    def __call__(self, record: Any, where: str) -> str:
        """The document text of one JSON / dataset record; plain strings are documents too."""
        if isinstance(record, str):
            return strip_bom(record)
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with a {self.text_field!r} field, "
                            f"got {type(record).__name__}")
        if self.text_field in record:
            value = record[self.text_field]
        elif MESSAGES_FIELD in record:
            value = record[MESSAGES_FIELD]
        else:
            keys = ", ".join(repr(k) for k in record) or "none"
            raise DataError(f"{where}: record has no {self.text_field!r} field (keys found: {keys}); "
                            f"pass the right field with --text-field")
        if value is None:
            return ""
        if isinstance(value, str):
            return strip_bom(value)
        if isinstance(value, list):
            return self.render(value, where)
        raise DataError(f"{where}: field {self.text_field!r} holds {type(value).__name__}, not text; "
                        f"pass a text field with --text-field")

    def render(self, messages: list, where: str) -> str:
        """`messages` through the tokenizer's chat template, as text."""
        if self.chat_template == "off":
            raise DataError(f"{where}: the record holds chat messages, and --chat-template is off; use "
                            f"--chat-template auto to render them with the tokenizer's chat template, or "
                            f"--text-field for a field of plain text")
        _check_messages(messages, where)
        if self.tokenizer is None:
            raise ChatNeedsTokenizerError(f"{where}: chat messages are rendered with a tokenizer's chat "
                                          "template, and none was given")
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(f"{where}: the record holds chat messages, but the tokenizer of "
                            f"{self.tokenizer.name_or_path!r} has no chat template; use a model whose tokenizer "
                            "has one (an instruct or chat model), or --chat-template off and --text-field "
                            "for a field of plain text")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as error:  # jinja's TemplateError ("roles must alternate"), or a template's own raise
            raise DataError(f"{where}: the tokenizer's chat template refused these messages: {error}") from None


def _check_messages(messages: list, where: str) -> None:
    for number, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"{where}: message {number} is not {{'role': ..., 'content': ...}} with text values "
                            f"(got {str(message)[:80]}); chat rows hold a list of such messages")
    if not messages:
        raise DataError(f"{where}: the chat record holds no messages")
