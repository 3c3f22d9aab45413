"""What a run writes for people to read, all from rank 0:

    out_dir/metrics.jsonl   one JSON object per line: {"kind": "train", "iter", "loss", "lr",
                            "tok_per_s", "mfu"} every log_interval steps, {"kind": "eval", "iter",
                            "train_loss", "val_loss", "val_bpb", "train_time"} every eval, and one
                            {"kind": "warmup", "iter", "seconds"}: the first step (compilation), and at the end
                            {"kind": "phases", ...}: where the run's wall time went, in seconds
                            (viz/metrics.py reads it back)
    out_dir/loss.svg        the loss curve, redrawn at every eval: open it in a browser
    wandb                   the same records, if --wandb_log (it never blocks or stops a run)
    the console             a progress bar on a terminal, plain lines in a log file

Other ranks get a NullLog that does nothing, so the training loop never asks who it is.
"""

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from common.files import atomic_write
from viz.loss_plot import loss_svg
from viz.metrics import read_metrics, read_records


class RunLog:
    def __init__(self, out_dir: Path, cfg, start_iter: int, resumed: bool, wandb_id: str | None):
        self.path, self.svg = out_dir / "metrics.jsonl", out_dir / "loss.svg"
        self.title = f"{cfg.out_dir}: train and val loss"
        if not resumed:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            # drop whatever was logged after the checkpoint: those steps run again. Train records
            # are step indices, eval records step counts.
            keep = [r for r in read_records(self.path)[0]
                    if (r["iter"] < start_iter if r["kind"] == "train" else r["iter"] <= start_iter)]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        self.file = open(self.path, "a")
        self.wandb = start_wandb(cfg, wandb_id) if cfg.wandb_log else None
        self.wandb_id = getattr(self.wandb, "id", None) or wandb_id
        self.bar = tqdm(total=cfg.max_iters, initial=start_iter, desc="train", dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def say(self, message: str):
        """A line on the console, above the progress bar if there is one."""
        if self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message)

    def record(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            try:
                self.wandb.log({f"{record['kind']}/{k}": v for k, v in record.items()
                                if k not in ("kind", "iter") and v is not None}, step=record["iter"])
            except Exception as e:  # a logging service must never stop the run
                print(f"warning: wandb.log failed ({e}); going on without it", file=sys.stderr)
                self.wandb = None

    def train(self, it: int, loss: float, lr: float, tok_per_s: float, mfu: float | None):
        self.record({"kind": "train", "iter": it, "loss": loss, "lr": lr, "tok_per_s": tok_per_s, "mfu": mfu})
        mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "-"
        line = f"loss {loss:.4f}, lr {lr:.2e}, {tok_per_s:,.0f} tok/s, mfu {mfu_s}"
        if self.bar.disable:
            print(f"iter {it}: {line}", flush=True)
        self.bar.set_postfix_str(line, refresh=False)

    def eval(self, it: int, train_loss: float, val_loss: float, train_time: float, best: bool, how: str = "",
             bpb: float | None = None):
        """how: what the val loss was measured over (training/evaluate.py val_label); bpb: the
        val loss in bits per byte of text, comparable across tokenizers."""
        self.record({"kind": "eval", "iter": it, "train_loss": train_loss, "val_loss": val_loss,
                     "val_bpb": bpb, "train_time": train_time})
        notes = [how] * bool(how) + ["best, saved ckpt.pt"] * best
        self.say(f"step {it}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
                 + (f", {bpb:.4f} bits/byte" if bpb is not None else "")
                 + (f" ({'; '.join(notes)})" if notes else ""))
        train, evals, _ = read_metrics(self.path)
        atomic_write(self.svg, loss_svg(train, evals, title=self.title, standalone=True))

    def warmup(self, it: int, seconds: float):
        self.record({"kind": "warmup", "iter": it, "seconds": seconds})

    def phases(self, seconds: dict):
        """Where this process's wall time went (to the file only: it belongs to no step)."""
        self.file.write(json.dumps({"kind": "phases", "iter": -1, **{k.replace("-", "_"): v
                                                                    for k, v in seconds.items()}}) + "\n")
        self.file.flush()

    def step(self):
        self.bar.update(1)

    def close(self):
        self.bar.close()
        self.file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:
                print(f"warning: wandb.finish failed ({e})", file=sys.stderr)


class NullLog:
    """RunLog's stand-in on ranks other than 0: every method does nothing."""
    wandb_id = None

    def say(self, message): pass
    def train(self, *args): pass
    def eval(self, *args): pass
    def warmup(self, *args): pass
    def phases(self, *args): pass
    def step(self): pass
    def close(self): pass


def start_wandb(cfg, run_id: str | None):
    """A wandb run, or None with a warning: wandb is optional and must never block training."""
    try:
        import wandb
    except ImportError:
        print("warning: wandb_log=true but wandb is not installed (pip install wandb); "
              "going on without it", file=sys.stderr)
        return None
    name = cfg.wandb_run_name or f"{Path(cfg.out_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # short timeouts: without a network wandb gives up after init_timeout instead of hanging;
    # then the run is logged offline (upload it later with `wandb sync`)
    for mode in (None, "offline"):
        try:
            settings = wandb.Settings(init_timeout=20, login_timeout=5, finish_timeout=30, silent=True)
            return wandb.init(project=cfg.wandb_project, name=name, config=asdict(cfg), id=run_id,
                              resume="allow" if run_id else None, mode=mode, settings=settings)
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if mode is None and os.environ.get("WANDB_MODE", "").lower() not in ("offline", "disabled"):
                print(f"warning: wandb.init failed ({reason}); logging offline instead", file=sys.stderr)
                continue
            print(f"warning: wandb.init failed ({reason}); going on without wandb", file=sys.stderr)
    return None
