"""What collection names, document ids and metadata keys may hold: one rule for all three.

Control characters (Unicode category Cc: U+0000-U+001F and U+007F-U+009F) are refused in each.
They are invisible in logs and tools, and SQLite's JSON functions end a string at U+0000, so an
id holding one could be stored but never found again. Texts, titles, queries, instructions and
metadata values may hold any character; they are stored and returned exactly as sent.

The API layer checks every request against these rules; the index layer calls the same checks
before a name becomes a folder or an id a row.
"""

from __future__ import annotations

import re

from irgate.errors import InvalidArgument

MAX_NAME_LENGTH = 64
MAX_ID_LENGTH = 256
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,%d}" % (MAX_NAME_LENGTH - 1))
NAME_RULE = (
    f"use 1 to {MAX_NAME_LENGTH} characters of letters, digits, '_' and '-', starting with a letter or digit"
)
ID_RULE = f"ids are 1 to {MAX_ID_LENGTH} characters without control characters"
KEY_RULE = "keys may not hold control characters (U+0000-U+001F, U+007F-U+009F)"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN = 40


def shown(value: str) -> str:
    """A value fit for an error message: at most 40 characters, control characters escaped."""
    return escaped(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def escaped(value: str) -> str:
    """value with each control character written as \\uXXXX, so it cannot break a log line."""
    return _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", value)


def control_character(value: str) -> str | None:
    """'U+0000 at position 3' for the first control character in value, or None."""
    match = _CONTROL.search(value)
    return None if match is None else f"U+{ord(match.group()):04X} at position {match.start()}"


def check_collection_name(name: object, field: str = "collection") -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        display = shown(name) if isinstance(name, str) else repr(name)
        raise InvalidArgument(f"{field} '{display}' is not a valid collection name; {NAME_RULE}", field=field)
    return name


def check_document_id(value: object, field: str = "document id") -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} {value!r} is not text; {ID_RULE}", field=field)
    if not value:
        raise InvalidArgument(f"{field} is empty; {ID_RULE}", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} '{shown(value)}' has {len(value)} characters; {ID_RULE}", field=field)
    found = control_character(value)
    if found is not None:
        raise InvalidArgument(f"{field} '{shown(value)}' holds a control character ({found}); {ID_RULE}", field=field)
    return value


def check_key(value: str, field: str) -> str:
    found = control_character(value)
    if found is not None:
        raise InvalidArgument(f"{field}: key '{shown(value)}' holds a control character ({found}); {KEY_RULE}", field=field)
    return value
