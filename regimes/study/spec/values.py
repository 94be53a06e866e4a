"""Value types and parsers of the study spec, with the wording of their errors.

Numbers, integers, TrainConfig field names, grid axes, Optuna distributions and
objectives. A parser that rejects a value raises `Bad`; pydantic carries it in
its ValidationError and `messages.py` turns it into the ConfigError whose key is
the YAML path (the path of the validated value, then `Bad.at` below it).
"""
from __future__ import annotations

import difflib
import math
from typing import Annotated, Mapping

from pydantic import BeforeValidator, Field

from regimes.core import record
from regimes.core.config import TrainConfig, field_kind

from .model import Distribution

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
MODES = ("min", "max")


class Bad(ValueError):
    """A spec value is wrong: `message` says what is allowed; `at` is the path of the
    offending part below the validated value ('' = the value itself, `elr`, `metric[1]`)."""

    def __init__(self, message: str, at: str = ""):
        super().__init__(message)
        self.message = message
        self.at = at


def tname(v) -> str:
    return "nothing" if v is None else type(v).__name__


# --- numbers ----------------------------------------------------------------------
def number(v, at: str = ""):
    """A finite YAML number, as given (int or float); also strings like '1e-4' (YAML 1.1
    reads an exponent without a dot as text)."""
    if isinstance(v, bool):
        raise Bad(f"expected a number, got {v!r}", at)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise Bad(f"expected a number, got {v!r}", at) from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise Bad(f"expected a finite number, got {v!r}", at)
    return v


def real(v, at: str = "") -> float:
    return float(number(v, at))


def integral(v):
    """3.0 -> 3 (YAML `3.0` for a count); anything else goes to pydantic's strict int check."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


# A range error quotes the value as written (cpu: 0, not 0.0) for Number, as a float for Real.
Number = Annotated[float, BeforeValidator(number)]
Real = Annotated[float, BeforeValidator(real)]
Int = Annotated[int, Field(strict=True), BeforeValidator(integral)]   # no bools, no strings


def parse_int(v, at: str = "") -> int:
    v = integral(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise Bad(f"expected an integer, got {v!r}", at)
    return v


# --- TrainConfig fields, grid axes, distributions ---------------------------------------
def check_field(key) -> None:
    """`key` must name a TrainConfig field (with a hint for near misses)."""
    names = TrainConfig.field_names()
    if key not in names:
        close = difflib.get_close_matches(str(key), names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise Bad(f"not a TrainConfig field{hint}; allowed: {', '.join(sorted(names))}", str(key))


def space(value, parse, what: str) -> dict:
    """A non-empty mapping of TrainConfig fields, each value parsed by `parse(key, value)`."""
    if not isinstance(value, Mapping) or not value:
        raise Bad(f"must be a non-empty mapping of TrainConfig fields to {what}")
    for key in value:
        check_field(key)
    return {k: parse(k, v) for k, v in value.items()}


def grid_axis(key: str, values) -> tuple:
    if isinstance(values, Mapping):
        raise Bad("a grid axis is a list of values; distributions "
                  f"({', '.join(DISTRIBUTIONS)}) need `kind: optuna`", key)
    if not isinstance(values, list):
        raise Bad(f"expected a non-empty list of values, got {values!r}; put single values in base", key)
    if not values:
        raise Bad("empty list; a grid axis needs at least one value", key)
    if len(set(map(repr, values))) != len(values):
        raise Bad(f"repeated values in {values!r}; each grid point would run twice", key)
    return tuple(values)


def distribution(key: str, spec) -> Distribution:
    if isinstance(spec, list):
        raise Bad("a list is a grid axis; inside an optuna space write "
                  f"{{choice: {spec!r}}} or a distribution ({', '.join(DISTRIBUTIONS)})", key)
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise Bad(f"expected one distribution, e.g. {{loguniform: [1.0e-4, 1.0]}}; "
                  f"allowed: {', '.join(DISTRIBUTIONS)}", key)
    (kind, args), = spec.items()
    at = f"{key}.{kind}"
    if kind not in DISTRIBUTIONS:
        raise Bad(f"unknown distribution; allowed: {', '.join(DISTRIBUTIONS)}", at)
    if not isinstance(args, list) or not args:
        raise Bad("expected a non-empty list" if kind == "choice" else "expected [low, high]", at)
    if kind == "choice":
        if len(set(map(repr, args))) != len(args):
            raise Bad(f"repeated choices in {args!r}", at)
        return Distribution(kind, tuple(args))
    if len(args) != 2:
        raise Bad(f"expected [low, high], got {args!r}", at)
    ftype = field_kind(key)
    if ftype not in (int, float):
        raise Bad(f"{key} is not numeric; use choice: [...]", at)
    if kind == "int":
        lo, hi = (parse_int(a, at) for a in args)
    else:
        if ftype is int:
            raise Bad(f"{key} is an integer field; use int: [low, high] or choice", at)
        lo, hi = (real(a, at) for a in args)
    if not lo < hi:
        raise Bad(f"needs low < high, got [{lo}, {hi}]", at)
    if kind == "loguniform" and lo <= 0:
        raise Bad(f"needs 0 < low < high, got [{lo}, {hi}]", at)
    return Distribution(kind, (lo, hi))


# --- objectives ----------------------------------------------------------------------------
_NOT_METRIC = f"is not a per-epoch measure; allowed: {', '.join(record.METRICS)}"
_NOT_MODE = "is not allowed; one of min, max (a list for multi-objective)"


def _names(value, allowed, complaint: str) -> tuple | None:
    """One name or a list of names, each in `allowed` (None: not given)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if v not in allowed:
            raise Bad(f"{v!r} {complaint}", f"[{i}]" if isinstance(value, list) else "")
    return tuple(items)


def metrics(value) -> tuple | None:
    return _names(value, record.METRICS, _NOT_METRIC)


def modes(value) -> tuple | None:
    return _names(value, MODES, _NOT_MODE)


def objectives(metric: tuple | None, mode: tuple | None, required: bool) -> tuple[tuple, tuple]:
    """The (metrics, modes) of a search, one mode per metric; () when none is given."""
    if metric is None and mode is None:
        if required:
            raise Bad(f"required for kind: optuna; one of {', '.join(record.METRICS)} "
                      "(or a list of them for multi-objective), with `mode`", "metric")
        return (), ()
    if metric is None:
        raise Bad(f"None {_NOT_METRIC}", "metric")
    if mode is None:
        raise Bad(f"None {_NOT_MODE}", "mode")
    if len(metric) != len(mode) or not metric:
        raise Bad(f"needs one mode per metric ({len(metric)} metrics, {len(mode)} modes)", "mode")
    if len(set(metric)) != len(metric):
        raise Bad(f"repeated metric in {list(metric)}", "metric")
    return metric, mode
