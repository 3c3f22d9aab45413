"""What an experiment hands back, and the words and numbers shared by every report.

    Result          its table, the one line of what it shows, its figures (the JSON) and its plot
    table_text      a table as aligned plain text
    paired          the difference of two arms, seed by seed, and whether the seeds agree on it
    versus          every arm against one, in words
    SERIES_COLOURS  one colour per arm, in order
"""

import statistics
from dataclasses import dataclass

SERIES_COLOURS = ["#1f4e9c", "#e0701b", "#2a9d5b", "#b23a48", "#7b5ea7", "#8c6d1f", "#3aa6b9", "#555555"]


@dataclass
class Result:
    columns: list       # the table's header
    rows: list          # its rows, one per arm (cells: str, int or float)
    shows: str          # one line, computed from the figures: what the experiment shows
    figures: dict       # everything measured, for the JSON
    svg: str            # the plot, a standalone SVG document
    notes: str = ""     # printed after the table (e.g. samples side by side)


def cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def table_text(columns, rows) -> str:
    cells = [[cell(c) for c in columns]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def paired(a: list, b: list) -> dict:
    """a - b per seed (the same seed gives two arms the same init and batches): the mean
    difference, its sample sd, and whether every seed has the same sign."""
    diffs = [x - y for x, y in zip(a, b)]
    return {"mean": sum(diffs) / len(diffs),
            "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            "seeds_agree": all(d > 0 for d in diffs) or all(d < 0 for d in diffs), "n": len(diffs)}


def agreement(p: dict) -> str:
    """How far to trust a paired difference, in words."""
    if p["n"] == 1:
        return "1 seed"
    if p["seeds_agree"]:
        return f"all {p['n']} seeds agree"
    return f"the {p['n']} seeds disagree: within noise"


def versus(values: dict, base: str) -> str:
    """Every arm but base against it, seed by seed: "name +0.012 (all 3 seeds agree), ..."."""
    out = []
    for name, v in values.items():
        if name != base:
            d = paired(v, values[base])
            out.append(f"{name} {d['mean']:+.3f} ({agreement(d)})")
    return ", ".join(out)


def pm(values) -> str:
    """mean +- sample sd of a list of floats, as text."""
    m = sum(values) / len(values)
    return f"{m:.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{m:.3f}"
