"""
Train a GPT, on one CPU or GPU, or on many with torchrun.

    python train.py                                   defaults, sized for this machine
    python train.py shakespeare_char                  configs/shakespeare_char.toml
    python train.py cpu --max_iters=500 --compile     a config, then --key=value overrides
    python train.py --init_from=resume                continue out/last.pt exactly
    torchrun --standalone --nproc_per_node=8 train.py shakespeare_char
    python train.py --help                            the settings, each with the value that will run

What lands in out_dir:
    ckpt.pt        the best val loss so far: everything below, at that iteration
    last.pt        the latest state: model, optimizers, scaler, config, tokenizer, iteration,
                   best val loss, every RNG and data stream (training/state.py); written at each
                   eval, at the end, and on Ctrl-C / SIGTERM
    metrics.jsonl  the losses, learning rate, tokens/s and MFU, one JSON object a line
    loss.svg       the loss curve, redrawn at every eval (training/runlog.py)
Checkpoints are written atomically and read with torch.load(weights_only=True).

The plumbing lives in training/: config.py (the settings), env.py (rank, device, dtype),
optim.py (optimizers, schedule), state.py (what a checkpoint holds), evaluate.py, runlog.py,
stops.py (Ctrl-C, a diverging loss). This file is the loop.

Data parallel: gradient_accumulation_steps is the global number of micro-batches per step
(default: one per process); each of the W processes runs gas / W of them. Micro-batch k of
every step comes from its own data stream k, and process r runs streams r*gas/W ..., so the W
processes together see exactly the batches one process with all gas micro-steps would see,
and the logged loss (the mean over all gas micro-batches) is the same, up to float rounding.
"""

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from common.errors import ConfigError, UserError
from common.files import clean_stale_temp_files
from data import load_meta, prepare, tokenizer_from_dict
from model import GPT
from model.pretrained import from_pretrained, tokenizer_from_pretrained
from training.config import TrainConfig, load_settings, model_config, resume_file  # noqa: F401 (TrainConfig: for importers)
from training.env import Phases, StepTimer, run_peak_flops, start_env
from training.evaluate import ValWindows, check_splits, evaluate, val_label
from training.optim import make_optimizers, schedule_warnings, set_schedule
from training.runlog import NullLog, RunLog
from training.state import Checkpoints, RunState, train_streams
from training.stops import DivergenceWatch, Stopper


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    stopper, env = Stopper(), None
    try:
        cfg, ckpt, origin = load_settings(argv)
        env = start_env(cfg)
        env.say(origin)
        for w in schedule_warnings(cfg):
            env.say(f"warning: {w}", file=sys.stderr)
        phases = Phases()
        with phases("setup"):
            run = setup(cfg, ckpt, env, phases)
        if run.state.iter_num >= cfg.max_iters:
            env.say(f"nothing to do: {resume_file(run.checkpoints.out_dir)} is at iteration "
                    f"{run.state.iter_num} and max_iters is {cfg.max_iters}; raise --max_iters to train further")
            return 0
        log = env.on_master(lambda: RunLog(run.checkpoints.out_dir, cfg, run.state.iter_num, run.resumed,
                                           ckpt.get("wandb_run_id") if ckpt else None)) or NullLog()
        try:
            status = train(cfg, env, run, log, stopper)
            log.phases(summary := time_summary(run))
        finally:
            log.close()
        if status == 0:
            env.say(f"done: {run.state.iter_num} iterations, best val loss {run.state.best_val_loss:.4f}; "
                    f"checkpoints in {cfg.out_dir} (ckpt.pt best, last.pt latest), loss curve in "
                    f"{Path(cfg.out_dir) / 'loss.svg'}; sample with: python sample.py --out_dir={cfg.out_dir}")
        env.say("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary.items()))
        return status
    except UserError as e:
        if rank0:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if rank0:
            print("\nstopped at once without saving; the latest checkpoint is still in out_dir", file=sys.stderr)
        return 130
    finally:
        stopper.restore()
        if env is not None:
            env.close()


@dataclass
class Run:
    """What the loop works with, built once by setup()."""
    raw_model: GPT               # the plain module: its parameters, its FLOPs, what is saved
    model: torch.nn.Module       # the same, compiled if asked: for evaluation
    train_model: torch.nn.Module  # and DDP-wrapped in DDP: for the training steps
    optimizers: list
    scaler: torch.amp.GradScaler
    state: RunState              # iteration, best val loss, train time, RNGs, data streams
    checkpoints: Checkpoints
    data_dir: Path
    meta: dict                   # the prepared data's meta.json: sizes, for bits per byte
    val_windows: ValWindows | None
    val_label: str               # what the val loss is measured over, for the log line
    tokens_per_iter: int
    resumed: bool
    phases: Phases               # wall seconds by phase, for the summary at the end


def setup(cfg: TrainConfig, ckpt: dict | None, env, phases: Phases) -> Run:
    out_dir = claim_out_dir(cfg, ckpt, env)
    gas = cfg.gradient_accumulation_steps or env.world
    if gas % env.world != 0:
        raise ConfigError(f"gradient_accumulation_steps={gas} must be a multiple of the number of "
                          f"processes ({env.world}): each runs gradient_accumulation_steps / {env.world} "
                          f"(or leave it out: one micro-batch per process)")
    env.say(f"device: {env.device}, dtype: {str(env.dtype).removeprefix('torch.')}, compile: {env.compile}"
            + (f", {env.world} processes" if env.ddp else ""))
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs: ~free speed

    # data: this process's micro-batch streams. A fine-tune reads it with GPT-2's own tokenizer;
    # resumed, with the one its checkpoint holds
    use = tokenizer_from_pretrained(cfg.init_from) if cfg.pretrained else \
        tokenizer_from_dict(ckpt["tokenizer"]) if ckpt is not None and cfg.tokenizer == "gpt2" else None
    data_dir = prepare_data(cfg, env, use)
    meta = load_meta(data_dir)
    check_splits(meta, cfg, data_dir)  # a split too short for block_size: now, not at the first eval
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    per_rank = gas // env.world
    state = RunState(train_streams(data_dir, cfg, env, range(env.rank * per_rank, (env.rank + 1) * per_rank)))

    # model, optimizers, and the checkpoint to continue from
    mcfg = model_config(cfg, meta["vocab_size"])
    if cfg.pretrained:  # GPT-2's weights, to fine-tune (training/config.py took its shape)
        raw_model = from_pretrained(cfg.init_from, block_size=cfg.block_size, dropout=cfg.dropout,
                                    attn_impl=cfg.attn_impl).train().to(env.device)
        if raw_model.config != mcfg:
            raise ConfigError(f"{cfg.init_from}'s vocabulary has {raw_model.config.vocab_size} tokens but its "
                              f"tokenizer {meta['vocab_size']}: they do not belong together")
    else:
        raw_model = GPT(mcfg).to(env.device)
    torch.manual_seed(cfg.seed + env.rank)  # but each process its own dropout masks
    optimizers = make_optimizers(raw_model, cfg, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.dtype == torch.float16)  # fp16 only
    checkpoints = Checkpoints(out_dir, env, raw_model, optimizers, scaler, cfg, mcfg, tokenizer, phases)
    if ckpt is not None:
        checkpoints.restore(ckpt, state, resume_file(out_dir))
    model = torch.compile(raw_model) if env.compile else raw_model
    train_model = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.ddp else model
    tokens_per_iter = gas * cfg.batch_size * cfg.block_size
    seen = (cfg.max_iters - (ckpt["iter_num"] if ckpt else 0)) * tokens_per_iter
    epochs = seen / meta["train_tokens"]
    env.say(f"data: {data_dir} ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
            f"{tokenizer.kind} tokenizer, vocab {meta['vocab_size']}); this run trains on {seen:,} tokens, "
            + (f"{epochs:.2f} epochs of the train split" if epochs >= 0.1 else f"{100 * epochs:.2g}% of one epoch"))
    env.say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens per step "
            f"({gas} x {cfg.batch_size} x {cfg.block_size}); out_dir: {out_dir}")
    val_windows = ValWindows(data_dir, meta, cfg, env) if cfg.eval_full_val else None
    return Run(raw_model, model, train_model, optimizers, scaler, state, checkpoints, data_dir, meta, val_windows,
               val_label(val_windows, cfg, env), tokens_per_iter, resumed=ckpt is not None, phases=phases)


def train(cfg: TrainConfig, env, run: Run, log, stopper: Stopper) -> int:
    """Evaluate and save, step, log, until max_iters, the target loss, a stop request or a
    diverging loss. Returns the exit status."""
    state, out_dir = run.state, run.checkpoints.out_dir
    timer, watch = StepTimer(env.device, run.phases), DivergenceWatch(env.device)
    params = list(run.raw_model.parameters())
    peak = run_peak_flops(env, cfg.peak_flops)
    flops_per_iter = run.raw_model.flops_per_token(cfg.block_size) * run.tokens_per_iter
    first = state.iter_num
    while True:
        it = state.iter_num

        # evaluate and checkpoint: every eval_interval steps and at the end (a resumed run's
        # first iteration was evaluated before its checkpoint was written)
        due = it % cfg.eval_interval == 0 and (it > 0 or cfg.eval_at_start) or it == cfg.max_iters
        if due and not (run.resumed and it == first):
            if diverged(watch, env, out_dir):
                return 1
            state.train_time += timer.split()
            with run.phases("evaluation"):
                losses = evaluate(run.model, run.data_dir, run.meta, run.val_windows, cfg, env)
            # ckpt.pt: the best of the trained weights (the first eval after step 0 always is)
            best = it > 0 and losses["val"] < state.best_val_loss
            state.best_val_loss = losses["val"] if best else state.best_val_loss
            env.on_master(lambda: log.eval(it, losses["train"], losses["val"], state.train_time, best, run.val_label,
                                           losses["val_bpb"]))
            if it > 0:
                last = cfg.always_save_checkpoint or it == cfg.max_iters
                run.checkpoints.save(["last.pt"] * last + ["ckpt.pt"] * best, state, log.wandb_id)
            if cfg.stop_at_val_loss is not None and losses["val"] <= cfg.stop_at_val_loss:
                if it > 0 and not cfg.always_save_checkpoint:
                    run.checkpoints.save(["last.pt"], state, log.wandb_id)
                log.say(f"reached val loss {losses['val']:.4f} <= stop_at_val_loss={cfg.stop_at_val_loss} "
                        f"at iteration {it} after {state.train_time:.1f} s of training; stopping")
                return 0
        if it >= cfg.max_iters:
            return 0

        # stop on Ctrl-C / SIGTERM, after saving where we are
        if stopper.requested(env, agree_now=it % cfg.log_interval == 0):
            if diverged(watch, env, out_dir):
                return 1
            state.train_time += timer.split()
            run.checkpoints.save(["last.pt"], state, log.wandb_id)
            log.say(f"stopped at iteration {it}; saved {out_dir / 'last.pt'} (continue with "
                    f"--init_from=resume --out_dir={out_dir})")
            return 128 + stopper.signal

        # one optimizer step, queued without waiting for the GPU
        scale = set_schedule(run.optimizers, it, cfg)
        timer.start()
        loss = train_step(run, cfg, env, params)
        timer.stop()
        watch.update(loss, it)
        if it == first:  # compilation and allocator warm-up: reported apart from training time
            log.warmup(it, timer.split("warm-up"))

        # log: the one place, every log_interval steps, where the loss is read back
        if it % cfg.log_interval == 0:
            if diverged(watch, env, out_dir):
                return 1
            state.train_time += timer.split()
            lossf = env.all_reduce(loss.clone()).item() / (len(state.loaders) * env.world)
            per_s = timer.rate()  # steps per second
            log.train(it, lossf, cfg.learning_rate * scale, run.tokens_per_iter * per_s,
                      flops_per_iter * per_s / peak if peak else None)
        state.iter_num += 1
        log.step()


def time_summary(run: Run) -> dict:
    """Where this process's wall time went, in seconds. "steps" is the optimizer steps alone
    (train.py's training clock, this process's share); "other" is logging, the progress bar and
    the loop itself."""
    s = run.phases.seconds
    out = {"total": run.phases.total(), "setup": s["setup"], "warm-up": s["warm-up"],
           "steps": s["steps"], "evaluation": s["evaluation"], "checkpoints": s["checkpoints"]}
    out["other"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


def train_step(run: Run, cfg, env, params: list) -> torch.Tensor:
    """One optimizer step over this process's micro-batches (one per data stream): forward,
    backward, clip, update. Returns the sum of their losses, on the device and not read back,
    so the CPU can queue the next step while the GPU still runs this one."""
    model, loaders, scaler = run.train_model, run.state.loaders, run.scaler
    streams = list(loaders)
    loss_sum = torch.zeros((), device=env.device)
    x, y = loaders[streams[0]].next_batch()
    for i in range(len(streams)):
        last = i == len(streams) - 1
        # DDP averages gradients across processes during backward; only the last micro-step
        # needs that, the others just accumulate locally
        with contextlib.nullcontext() if last or not env.ddp else model.no_sync():
            with env.autocast():  # the forward in bf16/fp16; backward runs in the forward's dtypes
                _, loss = model(x, y)
            if not last:
                x, y = loaders[streams[i + 1]].next_batch()  # read while the GPU runs the forward
            loss_sum += loss.detach()
            scaler.scale(loss / len(streams)).backward()
    if cfg.grad_clip > 0:
        for opt in run.optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    for opt in run.optimizers:
        scaler.step(opt)  # with fp16, skips the update if the gradients overflowed
    scaler.update()
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_sum


def diverged(watch: DivergenceWatch, env, out_dir: Path) -> bool:
    """Has the loss gone non-finite since the start? If so say so: nothing after it is saved."""
    bad = watch.check(env)
    if bad is None:
        return False
    kept = (f"the last good checkpoint, {out_dir / 'last.pt'}, is kept" if (out_dir / "last.pt").exists()
            else "no checkpoint had been written yet")
    env.say(f"error: the loss became non-finite at iteration {bad}: training diverged. Nothing was saved "
            f"from that step on; {kept}. Try a lower --learning_rate, a longer --warmup_iters, or "
            f"--grad_clip=1", file=sys.stderr)
    return True


def claim_out_dir(cfg: TrainConfig, ckpt: dict | None, env) -> Path:
    """out_dir, checked before any work: usable, and not holding another run (unless resuming).
    Temp files left by a killed writer are removed."""
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out_dir={out_dir} is a file, not a folder; choose another --out_dir")
    held = sorted(p.name for p in out_dir.glob("*.pt") if p.is_file()) + \
        ["metrics.jsonl"] * (out_dir / "metrics.jsonl").is_file()
    if ckpt is None and held:
        raise ConfigError(f"{out_dir} already holds a run ({', '.join(held)}); continue it with --init_from=resume, "
                          f"or start a new one with another --out_dir (or delete {out_dir})")

    def make():
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create --out_dir={out_dir}: {e.strerror or e}; choose another "
                              f"--out_dir") from None
        if not os.access(out_dir, os.W_OK):
            raise ConfigError(f"--out_dir={out_dir} is not writable; choose another --out_dir")
        clean_stale_temp_files(out_dir)
    env.on_master(make)  # rank 0 writes the run's files; if it cannot, every rank stops now
    return out_dir


def prepare_data(cfg: TrainConfig, env, tokenizer=None) -> Path:
    """The prepared dataset's folder (read with `tokenizer`, if given). The first process
    prepares it, the others wait, then find it prepared (or stop with its error)."""
    kwargs = dict(vocab_size=cfg.tokenizer_vocab_size, source=cfg.data_source, root=cfg.data_root, use=tokenizer,
                  bpe_sample_mb=cfg.bpe_sample_mb, hf_column=cfg.hf_column, hf_split=cfg.hf_split,
                  hf_config=cfg.hf_config)
    data_dir = env.on_master(lambda: prepare(cfg.dataset, cfg.tokenizer, quiet=False, **kwargs))
    return data_dir if env.master else prepare(cfg.dataset, cfg.tokenizer, quiet=True, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
