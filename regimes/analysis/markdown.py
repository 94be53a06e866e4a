"""Markdown tables for the reports (written by hand: pandas' to_markdown needs tabulate,
and the reports want 3 significant digits and `|` escaped)."""
from __future__ import annotations

import math

import pandas as pd


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(fmt(v).replace("|", "/") for v in row) + " |")
    return "\n".join(lines) + "\n"
