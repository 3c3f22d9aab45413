"""The lab's plots as standalone SVG documents: curves through viz.loss_plot.lines_svg, and the
one heatmap (head importance) drawn here.

    curves(lines, xlabel, ylabel, title)  {name: [(x, y)]} -> one line per name, in order
    heatmaps(panels, title)               [(label, rows of values, row names, column names)]
"""

import html

from viz.loss_plot import lines_svg
from .report import SERIES_COLOURS


def curves(lines: dict, xlabel: str, ylabel: str, title: str, skip_init: bool = False) -> str:
    """skip_init: leave out the points at step 0 (every arm starts near ln(vocab_size) = 4.3), so
    the axis spans the differences that training makes."""
    if skip_init:
        lines = {name: [(x, y) for x, y in pts if x > 0] for name, pts in lines.items()}
    series = [(name, SERIES_COLOURS[k % len(SERIES_COLOURS)], 2, pts)
              for k, (name, pts) in enumerate(lines.items())]
    return lines_svg(series, xlabel=xlabel, ylabel=ylabel, title=title, standalone=True) + "\n"


def shade(t: float) -> str:
    """0 -> white, 1 -> deep orange: a cell's colour for t in [0, 1]."""
    t = min(1.0, max(0.0, t))
    r, g, b = (round(255 + (e - 255) * t) for e in (0xc4, 0x4e, 0x0c))
    return f"#{r:02x}{g:02x}{b:02x}"


def label(x, y, words, anchor="middle", extra="") -> str:
    return f'<text x="{x:g}" y="{y:g}" text-anchor="{anchor}"{extra}>{html.escape(str(words))}</text>'


def heatmaps(panels: list, title: str, note: str = "", cell: int = 34) -> str:
    """Heatmaps side by side, one per panel (name, values[row][col], row names, column names),
    on one colour scale (white = the smallest value or 0, whichever is lower; orange = the largest);
    every cell also prints its value."""
    values = [v for _, grid, _, _ in panels for row in grid for v in row]
    lo, hi = min(0.0, min(values)), max(values)
    span = (hi - lo) or 1.0
    left, top, gap = 70, 52, 30
    widths = [len(cols) * cell for _, _, _, cols in panels]
    height = top + max(len(rows) for _, _, rows, _ in panels) * cell + 54
    width = max(640, left + sum(widths) + gap * (len(panels) - 1) + 16)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" '
           f'font-family="sans-serif" font-size="11" fill="#444">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>',
           label(10, 18, title, "start", ' font-size="14" fill="#222"')]
    x0 = left
    for (name, grid, rows, cols), w in zip(panels, widths):
        out.append(label(x0, top - 20, name, "start", ' fill="#222"'))
        out += [label(x0 + c * cell + cell / 2, top - 5, col) for c, col in enumerate(cols)]
        for r, row in enumerate(rows):
            y = top + r * cell
            if x0 == left:
                out.append(label(left - 6, y + cell / 2 + 4, row, "end"))
            for c, v in enumerate(grid[r]):
                t = (v - lo) / span
                out.append(f'<rect x="{x0 + c * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                           f'fill="{shade(t)}"><title>{html.escape(f"{name}, {row}, {cols[c]}: {v:.4f}")}</title></rect>')
                out.append(label(x0 + c * cell + cell / 2, y + cell / 2 + 4, f"{v:.2f}",
                                 extra=f' font-size="9" fill="{"#fff" if t > 0.6 else "#222"}"'))
        x0 += w + gap
    if note:
        out.append(label(10, height - 12, note, "start"))
    return "\n".join(out) + "\n</svg>\n"
