"""Server logging: plain text or one JSON object per line on stderr.

Records may carry structured fields (`extra={"fields": {...}}`): the text format appends them as
key=value pairs, the JSON format as keys of the object, so that log pipelines can filter on them
(one access line per RPC: method, collection, k, rerank, status, ms, request id).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "fields", None) or {}


def _shown(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(character.isspace() or character in '"=' for character in text) else text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = " ".join(f"{key}={_shown(value)}" for key, value in _fields(record).items())
        if not pairs:
            return line
        head, newline, traceback = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{newline}{traceback}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", format: str = "text") -> None:
    """Routes every logger to stderr in the chosen format (one of FORMATS, at one of LEVELS)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
