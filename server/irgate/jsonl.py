"""JSON-lines files as irgate reads them: BEIR's corpus (what `irgate index` upserts and `irgate
collection export` writes) and queries, FollowIR's top-ranked lists. A bad line is named by file,
line and what was expected."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# The fields every corpus line must hold (its title and text may be missing: embedded as ""), and a
# line as it should be, for the error that names a line without them.
CORPUS_FIELDS, CORPUS_LINE = ("_id",), '{"_id": "d1", "title": "...", "text": "..."}'


def read_jsonl(path: Path, required: Sequence[str] = (), example: str = "") -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, one a line (blank lines skipped), each holding the `required`
    fields. A line that is not such an object raises ValueError naming the file, the line and what
    was expected (`example`, a line as it should be), since the decoder's own message counts lines
    and columns within the one line it was given."""
    expected = f"one JSON object per line, like {example or json.dumps({name: '...' for name in required or ('_id',)})}"
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                # A byte order mark, which some editors write, can only start the file.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 text (byte {error.start + 1} of the line); "
                                 f"expected {expected}") from None
            if line.strip():
                yield _record(path, number, line, required, expected)


def _record(path: Path, number: int, line: str, required: Sequence[str], expected: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not JSON ({error.msg.removesuffix(' at')} at column {error.colno} of "
                         f"{line.rstrip()[:60]!r}); expected {expected}") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{number}: a JSON {type(row).__name__}, not an object; expected {expected}")
    missing = [name for name in required if name not in row]
    if missing:
        renamed = ' (it has "id": BEIR names that field "_id")' if "_id" in missing and "id" in row else ""
        raise ValueError(f"{path}:{number}: the record has no {' or '.join(json.dumps(name) for name in missing)}{renamed}; "
                         f"its fields are {', '.join(json.dumps(name) for name in row) or 'none'}; expected {expected}")
    return row
