"""docs/walkthrough.md stays true: every ```bash command in it runs from the repo root and prints
what the ```text block after it shows; every file and function it points at exists."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "walkthrough.md"
SCRATCH = REPO / "out-walkthrough"   # the walkthrough's own training run (out*/ is git-ignored)
NUMBER = re.compile(r"-?\d+\.?\d*(?:e-?\d+)?")


def blocks():
    """[(command, expected output or None)] for each ```bash block, in order."""
    fences = re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    out = []
    for n, (lang, body) in enumerate(fences):
        if lang == "bash":
            nxt = fences[n + 1] if n + 1 < len(fences) else ("", "")
            out.append((body.strip(), nxt[1] if nxt[0] == "text" else None))
    return out


def same_output(got: str, want: str) -> bool:
    """Line by line: the words must match exactly, integers too, and each decimal number to within
    one unit of its last digit (another BLAS may round the last digit differently; a wrong value
    is still caught)."""
    got_lines, want_lines = got.rstrip().splitlines(), want.rstrip().splitlines()
    if len(got_lines) != len(want_lines):
        return False
    for g, w in zip(got_lines, want_lines):
        if NUMBER.split(g.rstrip()) != NUMBER.split(w.rstrip()):
            return False
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(w)):
            decimals = len(b.split(".")[1]) if "." in b and not b.endswith(".") else 0
            tol = 1.01 * 10 ** -decimals if decimals else 0   # integers (shapes, counts) exactly
            if abs(float(a) - float(b)) > tol:
                return False
    return True


def test_the_doc_has_commands_and_outputs():
    found = blocks()
    assert len(found) >= 10, "docs/walkthrough.md lost its commands (or the fences changed)"
    assert sum(want is not None for _, want in found) >= 8
    for cmd, _ in found:
        argv = shlex.split(cmd)
        assert argv[0] == "python", f"walkthrough commands start with python: {cmd[:60]}"
    # the lesson's numbers are really in it
    text = DOC.read_text(encoding="utf-8")
    for numbers in ("[[0.401 0.198 0.401]", "[[0.802 0.599]", "[0.289 0.711 0.   ]", "[0.149 0.246 0.605]"):
        assert numbers in text


def test_every_pointer_exists():
    """Each linked file exists, and each `name()` / `Class.method()` is defined in the code."""
    text = DOC.read_text(encoding="utf-8")
    links = re.findall(r"\]\(\.\./([^)]+)\)", text)
    assert links, "no file links found"
    for link in links:
        assert (REPO / link).is_file(), f"walkthrough links to {link}, which does not exist"
    sources = ("common", "data", "model", "training", "viz")
    code = "\n".join(p.read_text(encoding="utf-8") for pattern in [f"{d}/*.py" for d in sources] + ["*.py"]
                     for p in REPO.glob(pattern))
    names = set(re.findall(r"`(?:\w+\.)?(\w+)\(\)`", text))
    assert len(names) >= 12
    for name in sorted(names):
        if name == "backward":   # loss.backward(): torch's, not ours
            continue
        assert re.search(rf"^\s*(def|class) {name}\b", code, re.M), f"walkthrough names {name}(), defined nowhere"


def run(cmd: str, want: str | None) -> str | None:
    """Run one command as the doc writes it, with this interpreter as `python`; None if it did
    what the doc says, else what went wrong."""
    # one thread per process: two of them share the cores, and torch's threads fighting over
    # a busy machine make a tiny model 10-50x slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *shlex.split(cmd)[1:]], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return f"{cmd}\nfailed (exit {r.returncode}):\n{r.stderr[-3000:]}"
    if want is not None and not same_output(r.stdout, want):
        return f"{cmd}\nprinted:\n{r.stdout}\nthe doc says:\n{want}"
    return None


def run_all(cmds) -> list:
    return [problem for cmd, want in cmds if (problem := run(cmd, want))]


def test_every_command_runs_and_prints_what_the_doc_says():
    """The scripts (train.py, load_run on what it trained, then sample.py) run in order on one
    thread; the `python -c` snippets that need nothing from them run meanwhile on another."""
    cmds = blocks()
    # what reads the walkthrough's own run waits for train.py; the rest runs beside it
    needs_run = [(c, w) for c, w in cmds if shlex.split(c)[1] != "-c" or SCRATCH.name in c]
    snippets = [(c, w) for c, w in cmds if (c, w) not in needs_run]
    scripts = needs_run
    assert [shlex.split(c)[1] for c, _ in scripts] == ["train.py", "-c", "sample.py"]
    shutil.rmtree(SCRATCH, ignore_errors=True)   # train.py never overwrites a run: start clean
    try:
        with ThreadPoolExecutor(2) as pool:
            problems = [p for job in [pool.submit(run_all, scripts), pool.submit(run_all, snippets)]
                        for p in job.result()]
        assert not problems, "\n\n".join(problems)
        page = (SCRATCH / "attention.html").read_text(encoding="utf-8")
        assert 'id="attn-data"' in page and '<svg id="loss-svg"' in page   # weights and the run's loss
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.mark.parametrize("got,want,ok", [
    ("loss 4.22, ln(65) = 4.17", "loss 4.22, ln(65) = 4.17", True),
    ("loss 4.23, ln(65) = 4.17", "loss 4.22, ln(65) = 4.17", True),    # last digit may differ by 1
    ("loss 4.25, ln(65) = 4.17", "loss 4.22, ln(65) = 4.17", False),
    ("loss 4.22, ln(64) = 4.17", "loss 4.22, ln(65) = 4.17", False),
    ("True", "False", False),
    ("a\nb", "a", False),
])
def test_output_comparison_can_fail(got, want, ok):
    assert same_output(got, want) is ok
