"""The resumable state of a run, and the checkpoints that hold it.

RunState is everything that moves during training besides the weights and the optimizers:
where the run is (iter_num, best_val_loss, train_time) and every source of randomness it
draws from (torch's RNG for dropout, CUDA's, and each data stream's loader). One owner saves
and restores all of it, so a resumed run sees exactly the batches and dropout masks an
uninterrupted one would have seen.

Data streams: micro-batch k of every step comes from its own stream k, a BatchLoader seeded
by (seed, k). Streams are numbered globally, so a run with an explicit
gradient_accumulation_steps can resume on a different number of processes and still read the
same batches; with another number of micro-batches a step it cannot (a warning says so).
"""

import hashlib
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from data import BatchLoader, DataError, read_split
from data.loader import resident_fits
from model.checkpoint import CheckpointError, save_checkpoint
from .config import LOCKED


def stream_seed(seed: int, name: str, k: int = 0) -> int:
    """A 64-bit seed for data stream k of `name`, different for every (seed, name, k)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{k}".encode()).digest()[:8], "little")


def train_streams(data_dir: Path, cfg, env, streams) -> dict:
    """{k: the loader of stream k} for this process's streams. With data_on_device they all
    gather from one copy of the train split on the device, where it fits (else a warning, and
    they read the memory-mapped file); unset, it is on where it fits."""
    path = data_dir / "train.bin"
    on = False
    if cfg.data_on_device is not False:
        on, words = resident_fits(path, env.device)
        if cfg.data_on_device and not on:
            env.say(f"warning: data_on_device: the train split ({words}) does not fit in a quarter of "
                    f"the free memory; reading it from the memory-mapped file instead", file=sys.stderr)
    tokens = read_split(path, env.device) if on else None
    return {k: BatchLoader(path, cfg.block_size, cfg.batch_size, device=env.device,
                           seed=stream_seed(cfg.seed, "train", k), tokens=tokens)
            for k in streams}


class RunState:
    def __init__(self, loaders: dict):
        self.iter_num, self.best_val_loss, self.train_time = 0, math.inf, 0.0
        self.loaders = loaders

    def state_dict(self, env) -> dict:
        """Every process's RNGs and streams (a collective in DDP: call it on every rank)."""
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(env.device) if env.device.type == "cuda" else None,
                "loaders": {k: loader.state_dict() for k, loader in self.loaders.items()}}
        everyone = [mine]
        if env.ddp:
            everyone = [None] * env.world
            dist.all_gather_object(everyone, mine)
        streams = {k: s for r in everyone for k, s in r.pop("loaders").items()}
        return {"iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "train_time": self.train_time,
                "rng": {"per_rank": everyone, "loaders": streams}}

    def load_state_dict(self, d: dict, env):
        self.iter_num, self.best_val_loss = int(d["iter_num"]), float(d["best_val_loss"])
        self.train_time = float(d.get("train_time", 0.0))
        rng = d["rng"]
        for k, loader in self.loaders.items():
            if k in rng["loaders"]:
                loader.load_state_dict(rng["loaders"][k])
        # micro-batches a step, one per stream: gradient_accumulation_steps, by default one per process
        was = d["config"]["gradient_accumulation_steps"] or len(rng["per_rank"])
        now = len(self.loaders) * env.world
        if was != now:
            env.say(f"warning: {stream_change(was, now)}", file=sys.stderr)
        if len(rng["per_rank"]) != env.world:
            env.say(f"note: the checkpoint was written by {len(rng['per_rank'])} processes, this run has "
                    f"{env.world}: " + ("data resumes exactly, " if was == now else "") + "dropout masks are reseeded")
            return
        mine = rng["per_rank"][env.rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and env.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], env.device)


def stream_change(was: int, now: int) -> str:
    """What resuming with `now` micro-batches a step, from a checkpoint that took `was`, does to
    the data streams (one per micro-batch)."""
    def streams(a, b, one, many):  # "stream 2 starts" / "streams 2-3 start"
        return f"stream {a} {one}" if b == a + 1 else f"streams {a}-{b - 1} {many}"

    def batches(n):
        return f"{n} micro-batch{'es' * (n > 1)}"

    change = streams(was, now, "starts fresh from its seed", "start fresh from their seeds") if now > was \
        else streams(now, was, "is no longer read", "are no longer read")
    return (f"the checkpoint took {batches(was)} a step (gradient_accumulation_steps, by default one per "
            f"process), this run takes {batches(now)}, one per data stream: "
            f"{streams(0, min(was, now), 'continues', 'continue')} where the checkpoint left off, {change}, "
            f"so the run no longer continues exactly as an uninterrupted one would")


class Checkpoints:
    """Writes the whole training state to out_dir/<name>, and restores it. Rank 0 writes;
    every rank must call save(), since gathering the RNGs is a collective."""

    def __init__(self, out_dir: Path, env, model, optimizers, scaler, cfg, model_config, tokenizer, phases):
        self.out_dir, self.env, self.model, self.optimizers, self.scaler = out_dir, env, model, optimizers, scaler
        self.fixed = {"config": asdict(cfg), "model_config": asdict(model_config), "tokenizer": tokenizer.to_dict()}
        self.phases = phases  # saving is timed as its own phase

    def save(self, names: list[str], state: RunState, wandb_id: str | None):
        if not names:  # the same on every rank: nothing to write, so nothing to gather either
            return
        with self.phases("checkpoints"):
            run = state.state_dict(self.env)

            def write():
                ckpt = {"model": self.model.state_dict(), **self.fixed, **run, "wandb_run_id": wandb_id,
                        "optimizer": [o.state_dict() for o in self.optimizers], "scaler": self.scaler.state_dict()}
                for name in names:
                    save_checkpoint(self.out_dir / name, ckpt)
            self.env.on_master(write)  # a failed write (a full disk) stops every rank, not rank 0 alone

    def restore(self, ckpt: dict, state: RunState, where: Path):
        """Load the checkpoint read from `where` into the model, the optimizers, the scaler and
        the run state; one that does not fit is one CheckpointError naming the way out."""
        if ckpt.get("tokenizer") != self.fixed["tokenizer"]:
            raise CheckpointError("the prepared data's tokenizer differs from the checkpoint's (the dataset "
                                  "was prepared again, or differently); resume with the same data or start "
                                  "a new run in another --out_dir")
        saved, now = ckpt["model_config"], self.fixed["model_config"]
        diff = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in ("vocab_size",) + LOCKED
                if k in now and saved.get(k, now[k]) != now[k]]
        if diff:
            raise CheckpointError(f"the checkpoint's model does not match this config ({'; '.join(diff)}); "
                                  f"resume with the checkpoint's settings or start a new run in another --out_dir")
        try:
            self.model.load_state_dict(strip_prefixes(ckpt["model"]))
            if len(ckpt["optimizer"]) != len(self.optimizers):
                raise ValueError(f"{len(ckpt['optimizer'])} optimizer states for {len(self.optimizers)} optimizers")
            for opt, s in zip(self.optimizers, ckpt["optimizer"]):
                opt.load_state_dict(with_live_settings(s, opt))
            self.restore_scaler(ckpt["scaler"])
            state.load_state_dict(ckpt, self.env)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, DataError) as e:
            raise CheckpointError(f"{where} does not fit this code ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); start a new run in "
                                  f"another --out_dir") from None

    def restore_scaler(self, saved: dict):
        """Only a float16 run has a GradScaler state (others save an empty one), and dtype=auto
        picks by the GPU: a run may resume in float16 from bf16 or float32, or the other way."""
        if bool(saved) == self.scaler.is_enabled():
            self.scaler.load_state_dict(saved)
        elif self.scaler.is_enabled():
            self.env.say("note: the checkpoint was trained without float16 and this run computes in float16: "
                         "the GradScaler starts fresh (it finds its scale in the first steps, skipping any "
                         "that overflow)")
        else:
            self.env.say(f"note: the checkpoint was trained in float16 and this run computes in "
                         f"{str(self.env.dtype).removeprefix('torch.')}, which needs no GradScaler: "
                         f"the checkpoint's is dropped")


def with_live_settings(saved: dict, opt) -> dict:
    """The saved optimizer state (its moments and step counts) with `opt`'s own group settings:
    this run's betas, decays, peaks and kernel flags (fused, foreach, capturable), as its config
    says. Optimizer.load_state_dict would adopt the saved groups' instead, so new betas would be
    silently ignored, and a last.pt written on a CPU would turn a CUDA run's fused AdamW into the
    for-loop one; set before loading, since it places each step counter by those flags."""
    groups = [{**g, **{k: v for k, v in live.items() if k != "params"}}
              for g, live in zip(saved["param_groups"], opt.param_groups)]
    groups += saved["param_groups"][len(groups):]  # a count that differs: load_state_dict says so
    return {**saved, "param_groups": groups}


def strip_prefixes(state_dict: dict) -> dict:
    """Weights saved from a torch.compile'd or DDP-wrapped model carry these prefixes."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out
