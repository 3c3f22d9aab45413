"""python -m lab [NAME] [--quick] [--out DIR] [--threads N]

With no name: the experiments, one a line, the name and then its question. With a name: run it,
print what it measured and what that shows, and write NAME.json and NAME.svg to --out
(default lab-out/NAME/). Mistakes (an unknown name, an --out that cannot be written) are one
"error:" line, never a traceback.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from common.errors import UserError
from . import EXPERIMENTS
from .report import table_text
from .trainer import Corpus


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own is a usage block and a line: one line is enough
        print(f"error: {message} (python -m lab --help)", file=sys.stderr)
        sys.exit(2)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--threads wants a whole number of at least 1, got {text!r}")
    return int(text)


def parse(argv):
    ap = Parser(prog="python -m lab", description="The lesson's questions about attention, each "
                "answered by a small controlled experiment on the built-in corpus, on a CPU. "
                "With no NAME, list them (name, then question, one a line).",
                epilog="A run prints its table and what it shows, and writes NAME.json (every figure "
                       "measured) and NAME.svg (its plot). docs/lab.md has each one's full run.")
    ap.add_argument("name", nargs="?", metavar="NAME", help="the experiment to run: " + ", ".join(EXPERIMENTS))
    ap.add_argument("--quick", action="store_true",
                    help="a tiny version (seconds): the same arms, a smaller model and budget, fewer seeds")
    ap.add_argument("--out", metavar="DIR", help="where NAME.json and NAME.svg go (default lab-out/NAME/)")
    ap.add_argument("--threads", type=positive, metavar="N",
                    help="torch threads (default: torch's own, which follows OMP_NUM_THREADS); these "
                         "models are small, and on a busy machine 1 is much faster (docs/lab.md)")
    return ap.parse_args(argv)


def writable_folder(path: Path):
    """Make the folder now, and prove it takes a file, before minutes of training."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out {path}: {e.strerror or e}; choose another --out") from None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(name, exp, plan, quick) -> list[str]:
    b = plan.budget
    return [f"lab {name}{' (quick)' if quick else ''}: {exp.QUESTION}",
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) on {os.cpu_count()} "
            f"{cpu_name()} cores; "
            f"seeds {', '.join(map(str, plan.seeds))}; every arm: {b.describe()}; arms interleaved "
            f"step by step, on the same batches",
            f"model: {', '.join(f'{k}={v}' for k, v in plan.model.items())}"]


def run(name, quick, out: Path) -> int:
    exp = EXPERIMENTS[name]
    plan = exp.QUICK if quick else exp.FULL
    writable_folder(out)
    lines = header(name, exp, plan, quick)
    print("\n".join(lines), flush=True)
    t = time.perf_counter()
    result = exp.run(Corpus(), plan)
    wall = time.perf_counter() - t
    print()
    print(table_text(result.columns, result.rows))
    if result.notes:
        print("\n" + result.notes)
    print(f"\nshows: {result.shows}")
    record = {"experiment": name, "question": exp.QUESTION, "quick": quick, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "seeds": list(plan.seeds), "budget": vars(plan.budget),
              "model": plan.model, "wall_s": round(wall, 1), "table": {"columns": result.columns,
              "rows": result.rows}, "shows": result.shows, "figures": result.figures}
    try:
        (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        (out / f"{name}.svg").write_text(result.svg, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write to --out {out}: {e.strerror or e}; choose another --out") from None
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.svg'} ({wall:.0f} s)")
    return 0


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.name is None:
        for name, exp in EXPERIMENTS.items():
            print(f"{name}  {exp.QUESTION}")
        return 0
    if args.name not in EXPERIMENTS:
        print(f"error: no experiment {args.name!r}; choose one of {', '.join(EXPERIMENTS)} "
              f"(python -m lab lists them)", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run(args.name, args.quick, Path(args.out or os.path.join("lab-out", args.name)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
