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
# The line on stdout that says the server listens: tests and scripts read the port from it.
READY_PREFIX = "irgate serving on "
_format = "text"


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
    global _format
    _format = format
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def ready_line(address: str, pid: int) -> str:
    """"irgate serving on HOST:PORT (pid N)", or with --log-format json the same as a JSON log entry
    that also carries `address` and `pid`: one line a log pipeline and ready_address both read."""
    message = f"{READY_PREFIX}{address} (pid {pid})"
    if _format != "json":
        return message
    record = logging.LogRecord("irgate", logging.INFO, __file__, 0, message, None, None)
    record.fields = {"address": address, "pid": pid}
    return JsonFormatter().format(record)


def ready_address(line: str) -> str | None:
    """The HOST:PORT of a ready_line in either format; None for any other line."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        return entry.get("address") if str(entry.get("message", "")).startswith(READY_PREFIX) else None
    return line[len(READY_PREFIX):].split()[0] if line.startswith(READY_PREFIX) else None
