"""Views of a model and its run, for people to look at (nothing here trains or samples):

    attention_page.py   one self-contained HTML page of a model's attention weights
    attention_page.html its template (plain HTML, CSS and JavaScript; edit it as such)
    loss_plot.py        line charts as static SVG: the loss curve (out_dir/loss.svg, and on the
                        page) and the curves of `python -m lab`
    metrics.py          reading a run's metrics.jsonl back (the loss curve, resume, the benchmarks)
"""
