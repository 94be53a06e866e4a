"""Pydantic's ValidationError -> one ConfigError keyed by the YAML path.

The path follows the YAML, not pydantic's location: no union tags (pydantic says
`search.grid.space`, the file says `search.space`), list items as `labels[1]`,
and a `values.Bad` adds the path below the value it was raised for. When there
are several errors the reader gets the first in the file's order, where an
unknown key comes before the other errors of its mapping.
"""
from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from regimes.errors import ConfigError

from .values import Bad, tname

_RANGE = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_CTX = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def config_error(exc: ValidationError, root: type[BaseModel]) -> ConfigError:
    """The first error of `exc` (raised validating `root`) as a ConfigError."""
    err = _first(exc.errors(include_url=False))
    place = _locate(root, err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, Bad):
        return ConfigError(_join(place.path, cause.at) or "spec", cause.message)
    if isinstance(cause, ConfigError):
        return ConfigError(_join(place.path, cause.key), cause.message)
    if err["type"].startswith("union_tag"):
        kind = err["input"].get("kind") if isinstance(err["input"], dict) else None
        return ConfigError(_join(place.path, "kind"), f"{kind!r} is not allowed; one of {', '.join(place.tags)}")
    return ConfigError(place.path or "spec", _message(err, place))


def _message(err: dict, place: _Place) -> str:
    kind, value, ctx = err["type"], err["input"], err.get("ctx") or {}
    if kind in ("extra_forbidden", "invalid_key") and place.owner is not None:
        hint = place.owner.unknown_hint
        return f"unknown key{' ' + hint if hint else ''}; allowed: {', '.join(place.owner.model_fields)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {value!r}"
    if kind in _RANGE:
        bound = ctx[_CTX[kind]]
        note = ((place.field.json_schema_extra or {}) if place.field else {}).get("note")
        return (f"{value} is out of range; allowed: {_RANGE[kind]} {bound:g}" + (f" ({note})" if note else ""))
    if kind == "literal_error":
        return f"{value!r} is not allowed; one of {', '.join(map(str, typing.get_args(place.type)))}"
    if kind == "string_type":
        return f"expected a string, got {tname(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {tname(value)}"
    return err["msg"]


def _first(errors: list[dict]) -> dict:
    """The error met first reading the file: pydantic's order, but an unknown key first in its mapping."""
    rank: dict[tuple, int] = {}
    for i, err in enumerate(errors):
        for n in range(1, len(err["loc"]) + 1):
            rank.setdefault(err["loc"][:n], i)

    def order(i_err):
        i, err = i_err
        loc = err["loc"]
        unknown = err["type"] in ("extra_forbidden", "invalid_key")
        return [-1 if unknown and n == len(loc) else rank[loc[:n]] for n in range(1, len(loc) + 1)], i

    return min(enumerate(errors), key=order)[1]


# --- from pydantic's location to the YAML path --------------------------------------------------
@dataclass
class _Place:
    """Where an error is: the YAML `path`, the model holding its last key (`owner`), that key's
    `field`, the `type` expected there, and for a tagged union the allowed `tags`."""
    path: str = ""
    owner: type[BaseModel] | None = None
    field: FieldInfo | None = None
    type: Any = None
    tags: tuple = ()


def _locate(root: type[BaseModel], loc: tuple) -> _Place:
    place, tp, parts = _Place(), root, list(loc)
    while parts:
        part = parts.pop(0)
        tp = _plain(tp)
        if _is_model(tp):
            place.owner, place.field = tp, tp.model_fields.get(part)
            place.path = _join(place.path, str(part))
            tp = place.field.annotation if place.field else None
            if place.field is not None and place.field.discriminator:
                members = {_tag(m, place.field.discriminator): m for m in typing.get_args(_plain(tp))}
                place.tags = tuple(members)
                tp = members.get(parts.pop(0)) if parts else tp
        else:
            place.owner, place.field = None, None
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if origin in (tuple, list) and isinstance(part, int):
                place.path += f"[{part}]"
                tp = args[0] if len(args) == 2 and args[1] is Ellipsis else (args[part] if part < len(args) else None)
            else:
                place.path = _join(place.path, str(part))
                tp = args[1] if origin is dict and len(args) == 2 else None
    place.type = _plain(tp)
    return place


def _plain(tp: Any) -> Any:
    """X for Annotated[X, ...] and for X | None."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        args = typing.get_args(tp)
        if _is_union(tp) and type(None) in args and len(args) == 2:
            tp = next(a for a in args if a is not type(None))
            continue
        return tp


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tag(member: type[BaseModel], discriminator: str) -> str:
    field: FieldInfo = member.model_fields[discriminator]
    return typing.get_args(_plain(field.annotation))[0]


def _join(path: str, key: str) -> str:
    if not key:
        return path
    if not path or key.startswith("["):
        return path + key
    return f"{path}.{key}"
