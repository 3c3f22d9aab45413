"""Line charts as static SVG, with round-numbered axes: a run's loss curve, and the lab's curves.

    loss_svg(train, evals) -> str    train: [(iter, loss)], evals: [(iter, train_loss, val_loss)]
                                     (metrics.py reads them from a run's metrics.jsonl)
    lines_svg(series, ...) -> str    any named lines [(name, colour, stroke width, [(x, y)])]

train.py writes loss_svg to out_dir/loss.svg at every evaluation, and the attention page embeds it;
`python -m lab` draws its experiments' curves with lines_svg. Plain SVG, no scripts: it opens in
any browser, from disk.
"""

import html
import math


def nice_ticks(lo: float, hi: float, n: int = 5) -> list:
    """About n round-numbered ticks (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    count = math.ceil((hi - start) / step - 1e-9)
    return [start + k * step for k in range(count + 1)]


SERIES = [("train loss (each log step)", "#7aa6d8", 1.2), ("train loss (eval)", "#1f4e9c", 2),
          ("val loss (eval)", "#e0701b", 2)]


def loss_svg(train, evals, width=640, height=280, title: str | None = None, standalone: bool = False) -> str:
    """Train loss (every logged step) and the eval's train/val loss against iteration, as one
    <svg> element styled by its own attributes, so it reads the same inside a page and, with
    standalone (the namespace a file on its own needs), as an .svg file. "" if nothing to draw."""
    points = [[(i, l) for i, l in train], [(i, a) for i, a, _ in evals], [(i, b) for i, _, b in evals]]
    series = [(name, colour, sw, pts) for (name, colour, sw), pts in zip(SERIES, points)]
    return lines_svg(series, width=width, height=height, title=title, standalone=standalone,
                     svg_id="loss-svg", aria="loss against iteration",
                     dots=[name for name, _, _ in SERIES if "eval" in name])


def lines_svg(series, xlabel="iteration", ylabel="loss", width=640, height=280, title: str | None = None,
              standalone: bool = False, svg_id: str | None = None, aria: str | None = None,
              dots=None) -> str:
    """Named lines [(name, colour, stroke width, [(x, y)])] on shared axes, the legend above; a
    line of at most 60 points gets a dot at each (only the lines named in dots, if given).
    Non-finite points are left out, and so is a line left empty. "" if nothing to draw."""
    series = [(name, colour, sw, [(x, y) for x, y in pts if math.isfinite(y)])
              for name, colour, sw, pts in series]
    series = [s for s in series if s[3]]
    pts = [p for s in series for p in s[3]]
    if not pts:
        return ""
    xt = nice_ticks(min(x for x, _ in pts), max(x for x, _ in pts))
    yt = nice_ticks(min(y for _, y in pts), max(y for _, y in pts))
    left, right, top, bottom = 52, 16, 14 + (22 if title else 0) + 16 * len(series), 40
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y):
        return top + (yt[-1] - y) / (yt[-1] - yt[0]) * ph

    xmlns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    ident = f' id="{html.escape(svg_id)}"' if svg_id else ""
    aria = aria or f"{ylabel} against {xlabel}"
    out = [f'<svg{ident}{xmlns} width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(aria)}" '
           f'font-family="sans-serif" font-size="11" fill="#444">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>']
    if title:
        out.append(f'<text x="{left}" y="18" font-size="14" fill="#222">{html.escape(title)}</text>')
    for k, (name, colour, sw, _) in enumerate(series):  # the legend, above the plot
        y = top - 16 * (len(series) - k) + 4
        out.append(f'<line x1="{left}" x2="{left + 18}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="{sw}"/>'
                   f'<text x="{left + 24}" y="{y + 4}">{html.escape(name)}</text>')
    for y in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e6e6e6" class="grid"/>'
                   f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
    for x in xt:
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#e6e6e6" class="grid"/>'
                   f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:,.6g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>'
               f'<text x="12" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + ph / 2})">{html.escape(ylabel)}</text>')
    for name, colour, sw, s in series:
        step = max(1, len(s) // 2000)  # a long run's log thins out to ~2000 points per line
        s = s[::step] + ([s[-1]] if (len(s) - 1) % step else [])
        xy = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="{sw}" '
                   f'data-series="{html.escape(name)}"><title>{html.escape(name)}</title></polyline>')
        if len(s) <= 60 and (dots is None or name in dots):
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in s]
    return "\n".join(out) + "\n</svg>"
