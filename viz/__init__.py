"""Views of a model and its run, for people to look at (nothing here trains or samples):

    attention_page.py   one self-contained HTML page of a model's attention weights
    attention_page.html its template (plain HTML, CSS and JavaScript; edit it as such)
    loss_plot.py        the loss curve as a static SVG (out_dir/loss.svg, and on the page)
"""
