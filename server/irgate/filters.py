"""The metadata filter language of Search: parsed once at the edge into a typed expression, matched
exactly against a document's metadata, and translated for the index engines to narrow their search.

A filter is a JSON object, Mongo-style (as Chroma and Qdrant clients write it):
    {"year": {"$gte": 2020}, "lang": {"$in": ["en", "de"]},
     "$or": [{"venue.name": "ACL"}, {"draft": {"$exists": False}}]}
Each entry is either a metadata path with its condition, or one of $and / $or (a non-empty list of
filters) and $not (one filter); the entries of an object must all hold. A condition is a plain JSON
value (equality, the original form of a filter: {"lang": "de"}, {"v": {"a": [1]}}) or an object of
operators that must all hold: $eq, $ne, $in, $nin (a list of values), $gt, $gte, $lt, $lte (a number or
a string), $exists (true or false) and $not (a condition).

Semantics:
  - values are equal as JSON values: true is not 1, 1 is 1.0, lists and objects compare whole.
  - $gt, $gte, $lt and $lte compare numbers with numbers and strings with strings (by code point); a
    document whose value has another type (or none) does not match: {"year": {"$gt": "2020"}} never
    matches a year stored as a number. Booleans are not numbers.
  - $ne, $nin and $not match a document that lacks the path, as in MongoDB; $exists: false matches
    exactly those; a key holding null exists.
  - A path is read through nested objects at each '.': "venue.name" is metadata["venue"]["name"]. A
    key that holds a dot itself is written with the dot escaped, "a\\.b" (and a backslash as "\\\\").
    Paths do not step into lists: where a path meets a list (or any non-object), the document lacks it.
  - A key starting with '$' is an operator, never a metadata key.

Engines may narrow their search with sqlite_where or milvus_expression, which never drop a match;
every candidate is then checked with matches_filter.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from irgate.errors import InvalidArgument
from irgate.identifiers import check_key, shown

_RANGES = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin", *_RANGES, "$exists", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")  # at the top of a filter, or of one of $and's and $or's
_SQL_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<=", "$eq": "="}
_MILVUS_OPERATORS = {**_SQL_OPERATORS, "$eq": "=="}
# Integers the engines are given as such; a Struct's numbers (doubles) are exact within it anyway.
_EXACT_INTEGER = 2**53
# SQLite (3.40) matches a JSON path label against the key's text as stored, escapes included, and
# metadata is stored as ASCII JSON: only keys of printable ASCII other than '"' and '\\' are found.
_SQLITE_KEY = re.compile(r'[ !#-\[\]-~]+')


@dataclass(frozen=True)
class Compare:
    """The value at path compared with `value`: op is $eq, $gt, $gte, $lt or $lte."""

    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class Exists:
    path: tuple[str, ...]
    present: bool


@dataclass(frozen=True)
class AllOf:
    terms: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    terms: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    term: Filter


Filter = Compare | Exists | AllOf | AnyOf | Not


def parse(value: object, field: str = "filter") -> Filter | None:
    """The filter as an expression, or None when it is empty (every document matches).

    field names the filter in errors, which name the offending path or operator below it,
    e.g. "filter.$or[1].year.$gt"."""
    if value is None:
        return None
    expression = _parse_object(value, field)
    return expression if expression.terms else None


def matches_filter(metadata: Mapping[str, Any], expression: Filter) -> bool:
    """Whether a document with this metadata matches, exactly as the module docstring says."""
    if isinstance(expression, Compare):
        found, value = _lookup(metadata, expression.path)
        if not found:
            return False
        if expression.op == "$eq":
            return json_equal(value, expression.value)
        if not _same_kind(value, expression.value):
            return False
        return {"$gt": value > expression.value, "$gte": value >= expression.value,
                "$lt": value < expression.value, "$lte": value <= expression.value}[expression.op]
    if isinstance(expression, Exists):
        return _lookup(metadata, expression.path)[0] == expression.present
    if isinstance(expression, AllOf):
        return all(matches_filter(metadata, term) for term in expression.terms)
    if isinstance(expression, AnyOf):
        return any(matches_filter(metadata, term) for term in expression.terms)
    return not matches_filter(metadata, expression.term)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: unlike Python's ==, true is not 1 and false is not 0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # 1 and 1.0 are one JSON number (protobuf Struct carries every number as a double)
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class SqlCondition:
    """A condition over the `metadata` column (JSON text): `sql` with its `parameters` in order."""

    sql: str
    parameters: tuple[Any, ...]
    exact: bool  # false: it holds for every match and maybe for other documents


def sqlite_where(expression: Filter) -> SqlCondition | None:
    """An SQLite condition over json_type/json_extract of the `metadata` column that holds for every
    matching document, or None where SQLite cannot narrow. Never NULL, so NOT of it is safe."""
    if isinstance(expression, Compare):
        path = _sqlite_path(expression.path)
        value = expression.value
        if path is None or isinstance(value, (list, dict)) or (isinstance(value, str) and "\x00" in value):
            return None  # SQLite's JSON functions end strings at U+0000
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT_INTEGER:
            return None  # SQLite's integers end at 2**63; the exact check compares the rest
        if value is None:
            return SqlCondition("json_type(metadata, ?) IS 'null'", (path,), exact=True)
        if isinstance(value, bool):
            return SqlCondition("json_type(metadata, ?) IS ?", (path, "true" if value else "false"), exact=True)
        kind = "json_type(metadata, ?) IS 'text'" if isinstance(value, str) else \
            "coalesce(json_type(metadata, ?), '') IN ('integer', 'real')"
        return SqlCondition(f"({kind} AND json_extract(metadata, ?) {_SQL_OPERATORS[expression.op]} ?)",
                            (path, path, value), exact=True)
    if isinstance(expression, Exists):
        path = _sqlite_path(expression.path)
        if path is None:
            return None
        return SqlCondition(f"json_type(metadata, ?) IS {'NOT ' if expression.present else ''}NULL", (path,), exact=True)
    if isinstance(expression, Not):
        inner = sqlite_where(expression.term)
        if inner is None or not inner.exact:
            return None
        return SqlCondition(f"NOT {inner.sql}", inner.parameters, exact=True)
    parts = [sqlite_where(term) for term in expression.terms]
    if isinstance(expression, AnyOf):
        if any(part is None for part in parts):
            return None
        return _joined(" OR ", "0", [part for part in parts if part is not None], exact=True)
    kept = [part for part in parts if part is not None]
    if not kept and parts:
        return None
    return _joined(" AND ", "1", kept, exact=len(kept) == len(parts))


def milvus_expression(expression: Filter, column: str = "metadata") -> str | None:
    """A Milvus boolean expression over the JSON `column` that is true for every matching document
    (Milvus also takes true for 1 and a missing key for null, and its != and not skip documents that
    lack the key, so negations are left to the gateway), or None where Milvus cannot narrow."""
    if isinstance(expression, Compare):
        path = _milvus_path(column, expression.path)
        literal = _milvus_literal(expression.value)
        if path is None:
            return None
        if expression.op == "$eq":
            if expression.value is None:
                return f"{path} is null"  # also true where the key is missing
            if isinstance(expression.value, (list, dict)):
                return f"exists {path}"  # Milvus cannot write these literals; the gateway compares them
        if literal is None:
            return None
        return f"{path} {_MILVUS_OPERATORS[expression.op]} {literal}"
    if isinstance(expression, Exists):
        path = _milvus_path(column, expression.path)
        # Milvus's `exists` is false for a null value, which $exists counts as present: only a missing
        # key (read as null) narrows.
        return None if path is None or expression.present else f"{path} is null"
    if isinstance(expression, Not):
        return None
    parts = [milvus_expression(term, column) for term in expression.terms]
    kept = [part for part in parts if part is not None]
    if isinstance(expression, AnyOf):
        return "(" + " or ".join(kept) + ")" if kept and len(kept) == len(parts) else None
    return "(" + " and ".join(kept) + ")" if kept else None


# ---- parsing ----


def _parse_object(value: object, field: str) -> AllOf:
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"{field} is {_kind(value)}; a filter is an object of metadata paths and $and, $or, $not", field=field
        )
    terms: list[Filter] = []
    for key, condition in value.items():
        if not isinstance(key, str):
            raise InvalidArgument(f"{field} has the key {key!r}; keys are text", field=field)
        if key.startswith("$"):
            terms.append(_parse_logical(key, condition, f"{field}.{shown(key)}"))
        else:
            path = _path(key, f"{field}.{shown(key)}")
            terms.append(_parse_condition(path, condition, f"{field}.{shown(key)}"))
    return AllOf(tuple(terms))


def _parse_logical(operator: str, value: object, field: str) -> Filter:
    if operator == "$not":
        return Not(_parse_object(value, field))
    if operator not in LOGICAL_OPERATORS:
        raise InvalidArgument(
            f"{field}: unknown operator '{shown(operator)}'; outside a path's condition use "
            f"{', '.join(LOGICAL_OPERATORS)} (a metadata key cannot start with '$')",
            field=field,
        )
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise InvalidArgument(f"{field} is {_kind(value)}; {operator} takes a non-empty list of filters", field=field)
    terms = tuple(_parse_object(item, f"{field}[{position}]") for position, item in enumerate(value))
    return AllOf(terms) if operator == "$and" else AnyOf(terms)


def _parse_condition(path: tuple[str, ...], condition: object, field: str) -> Filter:
    if not isinstance(condition, Mapping) or not any(isinstance(key, str) and key.startswith("$") for key in condition):
        return Compare(path, "$eq", _checked_value(condition, field))
    plain = [key for key in condition if not (isinstance(key, str) and key.startswith("$"))]
    if plain:
        raise InvalidArgument(
            f"{field} mixes operators with the plain key '{shown(str(plain[0]))}'; give either an object of "
            "operators or a value to compare as a whole",
            field=field,
        )
    terms = [_parse_operator(path, operator, argument, f"{field}.{shown(operator)}")
             for operator, argument in condition.items()]
    return terms[0] if len(terms) == 1 else AllOf(tuple(terms))


def _parse_operator(path: tuple[str, ...], operator: str, argument: object, field: str) -> Filter:
    if operator == "$eq":
        return Compare(path, "$eq", _checked_value(argument, field))
    if operator == "$ne":
        return Not(Compare(path, "$eq", _checked_value(argument, field)))
    if operator in ("$in", "$nin"):
        if not isinstance(argument, Sequence) or isinstance(argument, (str, bytes)):
            raise InvalidArgument(f"{field} is {_kind(argument)}; {operator} takes a list of values", field=field)
        either = AnyOf(tuple(Compare(path, "$eq", _checked_value(item, f"{field}[{position}]"))
                             for position, item in enumerate(argument)))
        return either if operator == "$in" else Not(either)
    if operator in _RANGES:
        if isinstance(argument, bool) or not isinstance(argument, (int, float, str)):
            raise InvalidArgument(
                f"{field} is {_kind(argument)}; {operator} compares numbers with numbers and strings with "
                "strings: give a number or a string",
                field=field,
            )
        return Compare(path, operator, _checked_value(argument, field))
    if operator == "$exists":
        if not isinstance(argument, bool):
            raise InvalidArgument(f"{field} is {_kind(argument)}; $exists takes true or false", field=field)
        return Exists(path, argument)
    if operator == "$not":
        return Not(_parse_condition(path, argument, field))
    raise InvalidArgument(
        f"{field}: unknown operator '{shown(operator)}'; a path's condition takes {', '.join(FIELD_OPERATORS)}",
        field=field,
    )


def _path(key: str, field: str) -> tuple[str, ...]:
    """The keys a dotted path steps through: '.' separates them, '\\.' is a dot and '\\\\' a backslash."""
    check_key(key, field)
    segments: list[str] = []
    current: list[str] = []
    escape = False
    for character in key:
        if escape:
            if character not in ".\\":
                raise InvalidArgument(_path_rule(field, key, f"'\\{character}' is not an escape"), field=field)
            current.append(character)
            escape = False
        elif character == "\\":
            escape = True
        elif character == ".":
            segments.append("".join(current))
            current = []
        else:
            current.append(character)
    if escape:
        raise InvalidArgument(_path_rule(field, key, "it ends in a lone '\\'"), field=field)
    segments.append("".join(current))
    if not all(segments):
        raise InvalidArgument(_path_rule(field, key, "it has an empty key"), field=field)
    return tuple(segments)


def _path_rule(field: str, key: str, problem: str) -> str:
    return (f"{field}: path '{shown(key)}' is not valid: {problem}; a path is keys joined by '.', with '\\.' for a dot "
            "and '\\\\' for a backslash inside a key")


def _checked_value(value: object, field: str) -> Any:
    """A JSON value with finite numbers (the api layer has checked a request's already)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{field} is {value}; JSON numbers must be finite (no NaN or infinity)", field=field)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _checked_value(item, f"{field}.{shown(str(key))}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _checked_value(item, f"{field}[{position}]")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "a list"
    return f"a {type(value).__name__}"


# ---- matching and translation helpers ----


def _lookup(metadata: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = metadata
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, (int, float)) and isinstance(b, (int, float))) or (isinstance(a, str) and isinstance(b, str))


def _sqlite_path(path: tuple[str, ...]) -> str | None:
    if not all(_SQLITE_KEY.fullmatch(key) for key in path):
        return None
    return "$" + "".join(f'."{key}"' for key in path)


def _joined(separator: str, empty: str, parts: list[SqlCondition], exact: bool) -> SqlCondition:
    if not parts:
        return SqlCondition(empty, (), exact)
    return SqlCondition("(" + separator.join(part.sql for part in parts) + ")",
                        tuple(parameter for part in parts for parameter in part.parameters), exact)


def _milvus_path(column: str, path: tuple[str, ...]) -> str | None:
    if not all(key.isprintable() for key in path):
        return None
    return column + "".join(f"[{milvus_string(key)}]" for key in path)


def milvus_string(value: str) -> str:
    """A string literal of Milvus's expression language (its escapes are JSON's)."""
    return json.dumps(value, ensure_ascii=False)


def _milvus_literal(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) <= _EXACT_INTEGER else None
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= _EXACT_INTEGER:
            return str(int(value))
        written = repr(value)
        return written if "e" not in written and "n" not in written else None  # Milvus reads no exponents
    if isinstance(value, str) and value.isprintable():
        return milvus_string(value)
    return None
