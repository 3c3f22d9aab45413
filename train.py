"""
Train a GPT, on one CPU or GPU, or on many with torchrun.

    python train.py                                   defaults, sized for this machine
    python train.py shakespeare_char                  configs/shakespeare_char.toml
    python train.py cpu --max_iters=500 --compile     a config, then --key=value overrides
    python train.py --init_from=resume                continue out/last.pt exactly
    torchrun --standalone --nproc_per_node=8 train.py shakespeare_char
    python train.py --help                            every setting with its default

What lands in out_dir:
    ckpt.pt        the best val loss so far: everything below, at that iteration
    last.pt        the latest state: model, optimizer, scaler, config, tokenizer, iteration,
                   best val loss and every RNG (torch, cuda, numpy, python, the data loaders),
                   written at each eval, at the end, and on Ctrl-C / SIGTERM
    metrics.jsonl  one JSON object per line: {"kind": "train", "iter", "loss", "lr", "tok_per_s",
                   "mfu"} every log_interval steps, {"kind": "eval", "iter", "train_loss",
                   "val_loss"} every eval_interval
Checkpoints are written atomically and read with torch.load(weights_only=True).

Data parallel: gradient_accumulation_steps is the global number of micro-batches per step;
each of the W processes runs gas / W of them. Micro-batch k of every step comes from its own
data stream k (a loader seeded by (seed, k)), and process r runs streams r*gas/W ... so the W
processes together see exactly the batches one process with all gas micro-steps would see,
and the logged loss (the mean over all gas micro-batches) is the same, up to float rounding.
"""

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from configs import ConfigError, build, load_config_file, read_args
from data import BatchLoader, DataError, load_meta, prepare, tokenizer_from_dict
from model import GPT, GPTConfig
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.muon import Muon
from common.errors import UserError


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"                # checkpoints (ckpt.pt best, last.pt latest) and metrics.jsonl
    init_from: Literal["scratch", "resume"] = "scratch"  # resume: continue out_dir/last.pt exactly
    eval_interval: int = 250            # evaluate (and write last.pt) every this many steps
    eval_iters: int = 200               # batches per split in each evaluation
    log_interval: int = 10              # a metrics line every this many steps
    always_save_checkpoint: bool = True  # write last.pt at every eval (false: only at the end)
    # data
    dataset: str = "shakespeare"        # shakespeare (offline), tinyshakespeare, or a .txt file / folder
    tokenizer: Literal["char", "gpt2", "bpe"] = "char"
    tokenizer_vocab_size: int | None = None  # bpe only; none = data's default (2048)
    data_source: str | None = None      # a local copy of tinyshakespeare's input.txt (no download)
    data_root: str | None = None        # where prepared datasets live; none = data/prepared
    # model
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None        # none = n_head (MHA); fewer = grouped-query, 1 = multi-query
    n_embd: int = 384
    block_size: int = 256               # context length in tokens
    dropout: float = 0.2
    bias: bool = False                  # biases in Linear and LayerNorm layers
    pos_emb: Literal["learned", "rope"] = "learned"
    attn_impl: Literal["sdpa", "explicit"] = "sdpa"
    # model options from the speedrun line of work (configs/speedrun*.toml); defaults = GPT-2's
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # rmsnorm: parameter-free
    embed_norm: bool = False            # a norm right after the embedding
    qk_norm: bool = False               # RMS-normalise q and k per head
    mlp_act: Literal["gelu", "relu2"] = "gelu"  # relu2: ReLU squared
    zero_init: bool = False             # residual output projections (and an untied head) start at 0
    tie_embeddings: bool = True         # the head shares the token embedding matrix
    logit_softcap: float = 0.0          # > 0: logits = c * tanh(logits / c)
    # optimization
    batch_size: int = 64                # sequences per micro-batch (per process)
    gradient_accumulation_steps: int = 1  # micro-batches per step, over all processes
    learning_rate: float = 1e-3         # peak, reached after warmup
    max_iters: int = 5000               # optimizer steps in all
    warmup_iters: int = 100             # linear warmup from ~0 to learning_rate
    lr_decay_iters: int = 5000          # cosine decay ends here (usually = max_iters)
    min_lr: float = 1e-4                # after decay (usually learning_rate / 10)
    decay_lr: bool = True               # false: constant learning_rate
    weight_decay: float = 0.1           # AdamW, on matrices only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0              # clip the gradient's global norm to this; 0 = off
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02               # Muon's peak learning rate (the schedule scales it like learning_rate)
    muon_momentum: float = 0.95
    lr_schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warmup, stable, linear cooldown to min_lr
    cooldown_frac: float = 0.3          # wsd: the last fraction of lr_decay_iters spent cooling down
    # system
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"  # auto: cuda if there is a GPU, else cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPUs that have it
    compile: bool | None = None         # torch.compile the model; none = on CUDA only
    seed: int = 1337
    data_on_device: bool = False        # keep the whole dataset on the device, gather batches there
    eval_full_val: bool = False         # val loss from one exact pass over the whole val split
    stop_at_val_loss: float | None = None  # stop as soon as an eval reaches this val loss
    peak_flops: float | None = None     # the device's peak FLOP/s for MFU; none = known GPUs only
    # logging
    wandb_log: bool = False             # log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "qkvgpt"
    wandb_run_name: str | None = None   # none = out_dir and the start time

    def __post_init__(self):
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:  # also catches nan
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.cooldown_frac <= 1:
            raise ConfigError(f"cooldown_frac must be in [0, 1], got {self.cooldown_frac}")
        if not self.muon_lr >= 0 or not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"muon_lr must be >= 0 and muon_momentum in [0, 1), got "
                              f"{self.muon_lr} and {self.muon_momentum}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")


# settings that decide the model's shape or its data: a resumed run must keep them
LOCKED = ("dataset", "tokenizer", "tokenizer_vocab_size", "n_layer", "n_head", "n_kv_head",
          "n_embd", "block_size", "bias", "pos_emb", "norm", "embed_norm", "qk_norm", "mlp_act",
          "tie_embeddings", "logit_softcap")
# dense bf16 (fp16 on V100/T4) peak FLOP/s for MFU, by a substring of the device name, first
# match wins; SXM figures for H100/A100, as nanoGPT uses 312e12 for the A100
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12,
             "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}

DESCRIPTION = """Train a GPT. With no config file the defaults are sized for the machine: the full
run below on a GPU, configs/cpu.toml (a few minutes on two cores) without one."""


def error(message):
    print(f"error: {message}", file=sys.stderr)
    return 1


# -----------------------------------------------------------------------------
# pieces of the loop

def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (nanoGPT's schedule), or
    with lr_schedule=wsd: hold the peak, then fall linearly to min_lr over the last
    cooldown_frac of lr_decay_iters (the loss drops most during that cooldown)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(cfg.cooldown_frac * cfg.lr_decay_iters))
        frac = min(1.0, (cfg.lr_decay_iters - it) / cooldown)  # 1 until the cooldown starts, then -> 0
        return cfg.min_lr + frac * (cfg.learning_rate - cfg.min_lr)
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(params, cfg: TrainConfig, device_type: str):
    """AdamW that decays only the matrices (linear weights, embeddings): decaying biases and
    LayerNorm gains would only pull them towards 0 for no benefit."""
    params = [p for p in params if p.requires_grad]  # model.parameters() lists a tied weight once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = device_type == "cuda"  # one kernel for all parameters instead of a loop of small ones
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


def make_optimizers(model: GPT, cfg: TrainConfig, device_type: str) -> list:
    """[AdamW] or, with optimizer=muon, [Muon for the blocks' 2-D weights, AdamW for the rest]."""
    if cfg.optimizer == "adamw":
        return [make_optimizer(model.parameters(), cfg, device_type)]
    roles = model.parameters_by_role()
    rest = roles["embeddings"] + roles["head"] + roles["gains"]
    muon = Muon(roles["matrices"], lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay)
    return [muon, make_optimizer(rest, cfg, device_type)]


def stream_seed(seed: int, name: str, k: int = 0) -> int:
    """A 64-bit seed for data stream k of `name`, different for every (seed, name, k)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{k}".encode()).digest()[:8], "little")


def strip_prefixes(state_dict: dict) -> dict:
    """Weights saved from a torch.compile'd or DDP-wrapped model carry these prefixes."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


class Stopper:
    """Turns Ctrl-C / SIGTERM into a request to stop after the current step, so the loop can
    save last.pt first. A second Ctrl-C quits at once (last.pt from the latest eval stays)."""

    def __init__(self):
        self.signal = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step to save last.pt "
                  f"(Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Metrics:
    """Appends one JSON object per line to out_dir/metrics.jsonl (and to wandb, if on)."""

    def __init__(self, path: Path, resume_iter: int | None, wandb_run):
        self.path, self.wandb = path, wandb_run
        if resume_iter is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            # drop whatever was logged after the checkpoint: those steps will be run again
            keep = [line for line in path.read_text().splitlines() if line.strip()
                    and self._before(json.loads(line), resume_iter)]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)
        self.file = open(path, "a")

    @staticmethod
    def _before(record, it):  # train records are step indices, eval records step counts
        return record["iter"] < it if record.get("kind") == "train" else record["iter"] <= it

    def log(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            try:
                kind = record["kind"]
                self.wandb.log({f"{kind}/{k}": v for k, v in record.items()
                                if k not in ("kind", "iter") and v is not None}, step=record["iter"])
            except Exception as e:  # a logging service must never stop the run
                print(f"warning: wandb.log failed ({e}); going on without it", file=sys.stderr)
                self.wandb = None

    def close(self):
        self.file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:
                print(f"warning: wandb.finish failed ({e})", file=sys.stderr)


def start_wandb(cfg: TrainConfig, run_id: str | None):
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


# -----------------------------------------------------------------------------
# setup: config, device, data, model

def setup_distributed():
    """(rank, world_size, local_rank); a process group when started by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return rank, world, local


def pick_device(cfg: TrainConfig, local_rank: int):
    """(torch.device, autocast dtype, compile?) from device/dtype/compile, 'auto' resolved."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but PyTorch sees no CUDA GPU; use --device=cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but this machine has no Apple GPU; use --device=cpu (or auto)")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if name == "cuda" else "float32"
    if dtype == "float16" and name != "cuda":
        raise ConfigError(f"dtype=float16 needs CUDA (a GradScaler); on {name} use float32 or bfloat16")
    compile = cfg.compile if cfg.compile is not None else name == "cuda"
    return device, getattr(torch, dtype), compile


def load_settings(argv: list[str]):
    """(TrainConfig, checkpoint or None, a line saying where the config came from).

    Layers, later wins: dataclass defaults < configs/cpu.toml (no config file given and no
    GPU) or the checkpoint's config (resume) < the config file < --key=value."""
    path, values = read_args(TrainConfig, argv, prog="train.py", description=DESCRIPTION)
    base, origin = {}, f"config: {path}" if path else "config: the defaults (configs/shakespeare.toml)"
    if values.get("init_from") == "resume":
        out_dir = Path(values.get("out_dir", TrainConfig.out_dir))
        if not (out_dir / "last.pt").exists():
            raise CheckpointError(f"nothing to resume: {out_dir / 'last.pt'} does not exist; point --out_dir "
                                  f"at an earlier run, or start a new one without --init_from=resume")
        ckpt = load_checkpoint(out_dir / "last.pt")
        if not all(k in ckpt for k in ("config", "optimizer", "iter_num", "rng")):
            raise CheckpointError(f"{out_dir / 'last.pt'} holds weights but no training state; "
                                  f"it cannot be resumed (start a new run in another --out_dir)")
        known = {f.name for f in fields(TrainConfig)}
        base = {k: v for k, v in ckpt["config"].items() if k in known}
        for key in LOCKED:
            if key in values and key in base and values[key] != base[key]:
                raise ConfigError(
                    f"{out_dir / 'last.pt'} was trained with {key}={base[key]}, but {key}={values[key]} "
                    f"was asked for; leave {key} out to resume, or start a new run in another --out_dir")
        values["out_dir"] = str(out_dir)  # where it is now, wherever it was trained
        origin = f"config: resumed from {out_dir / 'last.pt'} (iteration {ckpt['iter_num']})" + \
            (f", then {path}" if path else "")
        return build(TrainConfig, {**base, **values}), ckpt, origin
    if path is None:
        probe = build(TrainConfig, values)
        if pick_device(probe, 0)[0].type != "cuda":
            base = load_config_file(TrainConfig, "cpu")
            origin = "config: configs/cpu.toml, the CPU-sized default (no GPU in use; on a GPU " \
                     "`python train.py` runs the full configs/shakespeare.toml)"
    return build(TrainConfig, {**base, **values}), None, origin


def prepare_data(cfg: TrainConfig, master: bool, ddp: bool) -> Path:
    """The prepared dataset's folder. The first process prepares it, the others wait."""
    kwargs = dict(vocab_size=cfg.tokenizer_vocab_size, source=cfg.data_source, root=cfg.data_root)
    if master:
        data_dir = prepare(cfg.dataset, cfg.tokenizer, quiet=False, **kwargs)
    if ddp:
        dist.barrier()
    if not master:
        data_dir = prepare(cfg.dataset, cfg.tokenizer, quiet=True, **kwargs)
    return data_dir


# -----------------------------------------------------------------------------
# the run

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank, world, local_rank = setup_distributed()
    ddp, master = world > 1, rank == 0
    say = (lambda *a, **k: print(*a, **k, flush=True)) if master else (lambda *a, **k: None)
    stopper = Stopper()
    try:
        return train(argv, rank, world, local_rank, ddp, master, say, stopper)
    except UserError as e:
        return error(e) if master else 1
    except KeyboardInterrupt:
        say("\nstopped at once without saving; the latest checkpoint is still in out_dir", file=sys.stderr)
        return 130
    finally:
        stopper.restore()
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def train(argv, rank, world, local_rank, ddp, master, say, stopper) -> int:
    cfg, ckpt, origin = load_settings(argv)
    device, dtype, compile = pick_device(cfg, local_rank)
    gas = cfg.gradient_accumulation_steps
    if gas % world != 0:
        raise ConfigError(f"gradient_accumulation_steps={gas} must be a multiple of the number of "
                          f"processes ({world}): each runs gradient_accumulation_steps / {world}")
    out_dir = Path(cfg.out_dir)
    if ckpt is None and (out_dir / "last.pt").exists():
        raise ConfigError(f"{out_dir} already holds a run (last.pt); continue it with --init_from=resume, "
                          f"or start a new one with another --out_dir (or delete {out_dir})")
    say(origin)
    say(f"device: {device}, dtype: {str(dtype).removeprefix('torch.')}, compile: {compile}"
        + (f", {world} processes" if ddp else ""))

    # seeds: the same model init everywhere (DDP also broadcasts rank 0's), own dropout per rank
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs: ~free speed

    # data
    data_dir = prepare_data(cfg, master, ddp)
    meta = load_meta(data_dir)
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    per_rank = gas // world
    streams = range(rank * per_rank, (rank + 1) * per_rank)  # this process's micro-batch streams
    loaders = {k: BatchLoader(data_dir / "train.bin", cfg.block_size, cfg.batch_size, device=device,
                              seed=stream_seed(cfg.seed, "train", k), resident=cfg.data_on_device)
               for k in streams}

    # model
    mcfg = GPTConfig(vocab_size=meta["vocab_size"], block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                     bias=cfg.bias, pos_emb=cfg.pos_emb, attn_impl=cfg.attn_impl, norm=cfg.norm,
                     embed_norm=cfg.embed_norm, qk_norm=cfg.qk_norm, mlp_act=cfg.mlp_act,
                     zero_init=cfg.zero_init, tie_embeddings=cfg.tie_embeddings,
                     logit_softcap=cfg.logit_softcap)
    raw_model = GPT(mcfg)
    torch.manual_seed(cfg.seed + rank)
    iter_num, best_val_loss, train_time = 0, float("inf"), 0.0
    raw_model.to(device)
    optimizers = make_optimizers(raw_model, cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    if ckpt is not None:
        check_compatible(ckpt, mcfg, meta)
        try:
            raw_model.load_state_dict(strip_prefixes(ckpt["model"]))
            if len(ckpt["optimizer"]) != len(optimizers):
                raise ValueError(f"{len(ckpt['optimizer'])} optimizer states for {len(optimizers)} optimizers")
            for opt, state in zip(optimizers, ckpt["optimizer"]):
                opt.load_state_dict(state)
            train_time = float(ckpt.get("train_time", 0.0))
            scaler.load_state_dict(ckpt["scaler"])
            restore_rng(ckpt["rng"], loaders, rank, world, device, say)
            iter_num, best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, DataError) as e:
            raise CheckpointError(f"{out_dir / 'last.pt'} does not fit this code ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); start a new run in "
                                  f"another --out_dir") from None
    model = torch.compile(raw_model) if compile else raw_model
    train_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if ddp else model
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    say(f"data: {data_dir} ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
        f"{tokenizer.kind} tokenizer, vocab {meta['vocab_size']})")
    tokens_per_iter = gas * cfg.batch_size * cfg.block_size
    say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens per step "
        f"({gas} x {cfg.batch_size} x {cfg.block_size}); out_dir: {out_dir}")
    peak = cfg.peak_flops or peak_flops(device, dtype)
    flops_per_iter = raw_model.flops_per_token(cfg.block_size) * tokens_per_iter

    val_windows = None
    if cfg.eval_full_val:
        # every val token once: consecutive windows of block_size, each predicting its next tokens
        val = torch.from_numpy(np.fromfile(data_dir / "val.bin", dtype=meta["dtype"]).astype(np.int64))
        n = (len(val) - 1) // cfg.block_size * cfg.block_size
        val_windows = (val[:n].view(-1, cfg.block_size).to(device),
                       val[1:n + 1].view(-1, cfg.block_size).to(device))

    def full_val_loss() -> float:
        """Exact mean loss over all val windows (each process takes every world-th batch)."""
        xs, ys = val_windows
        rows = max(cfg.batch_size, 16384 // cfg.block_size)  # no backward: bigger batches fit
        total = torch.zeros((), device=device, dtype=torch.float64)
        for k, i in enumerate(range(0, len(xs), rows)):
            if k % world == rank:
                x, y = xs[i:i + rows], ys[i:i + rows]
                with torch.no_grad(), autocast:
                    total += model(x, y)[1].double() * len(x)  # the batch's mean, weighted by its size
        if ddp:
            dist.all_reduce(total)
        return total.item() / len(xs)

    def evaluate() -> dict:
        """Mean loss over eval_iters batches of each split: the same batches at every eval (a
        fixed seed), shared out among the processes; the training streams are not touched.
        With eval_full_val, val is instead one exact pass over the whole split."""
        model.eval()
        out = {}
        if val_windows is not None:
            out["val"] = full_val_loss()
        for split in ["train"] if val_windows is not None else ["train", "val"]:
            loader = BatchLoader(data_dir / f"{split}.bin", cfg.block_size, cfg.batch_size,
                                 device=device, seed=stream_seed(cfg.seed, f"eval-{split}"))
            total = torch.zeros((), device=device, dtype=torch.float64)
            for k in range(cfg.eval_iters):
                x, y = loader.next_batch()
                if k % world == rank:
                    with torch.no_grad(), autocast:
                        total += model(x, y)[1].double()
            if ddp:
                dist.all_reduce(total)
            out[split] = total.item() / cfg.eval_iters
        model.train()
        return out

    def save(names):
        """Write the full training state to out_dir/<name> for each name (collective in DDP)."""
        state = gather_state(loaders, device, ddp)
        if not master:
            return
        ckpt = {"model": raw_model.state_dict(), "model_config": asdict(mcfg),
                "tokenizer": tokenizer.to_dict(), "config": asdict(cfg), "iter_num": iter_num,
                "best_val_loss": best_val_loss, "optimizer": [o.state_dict() for o in optimizers],
                "train_time": train_time,
                "scaler": scaler.state_dict(), "rng": state,
                "wandb_run_id": getattr(wandb_run, "id", None) or wandb_id}
        for name in names:
            save_checkpoint(out_dir / name, ckpt)

    if iter_num >= cfg.max_iters:
        say(f"nothing to do: {out_dir / 'last.pt'} is at iteration {iter_num} and max_iters is "
            f"{cfg.max_iters}; raise --max_iters to train further")
        return 0
    wandb_id = ckpt.get("wandb_run_id") if ckpt else None
    wandb_run = start_wandb(cfg, wandb_id) if (cfg.wandb_log and master) else None
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics(out_dir / "metrics.jsonl", iter_num if ckpt else None, wandb_run) if master else None

    # ---- the loop: eval / checkpoint, then one optimizer step of gas micro-batches ----
    bar = tqdm(total=cfg.max_iters, initial=iter_num, desc="train", dynamic_ncols=True,
               disable=not master or not sys.stderr.isatty())
    write = bar.write if not bar.disable else print
    start_iter, t_start, t0, last_log = iter_num, time.time(), time.time(), iter_num
    status = 0
    while True:
        # evaluate at every eval_interval and at the end (a resumed run's first iteration was
        # already evaluated before its checkpoint was written)
        if (iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters) and \
                not (ckpt is not None and iter_num == start_iter):
            losses = evaluate()
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            if master:
                metrics.log({"kind": "eval", "iter": iter_num, "train_loss": losses["train"],
                             "val_loss": losses["val"], "train_time": train_time})
                write(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                      + (" (best, saved ckpt.pt)" if improved and iter_num > 0 else ""))
            if iter_num > 0:
                names = ["last.pt"] if cfg.always_save_checkpoint or iter_num == cfg.max_iters else []
                names += ["ckpt.pt"] if improved else []
                if names:
                    save(names)
            t0, last_log = time.time(), iter_num  # eval and saving are not training time
            if cfg.stop_at_val_loss is not None and losses["val"] <= cfg.stop_at_val_loss:
                if iter_num > 0 and not cfg.always_save_checkpoint:
                    save(["last.pt"])
                say(f"reached val loss {losses['val']:.4f} <= stop_at_val_loss={cfg.stop_at_val_loss} "
                    f"at iteration {iter_num} after {train_time:.1f} s of training; stopping")
                break
        if iter_num >= cfg.max_iters:
            break
        if stop_requested(stopper, device, ddp):
            save(["last.pt"])
            say(f"stopped at iteration {iter_num}; saved {out_dir / 'last.pt'} "
                f"(continue with --init_from=resume --out_dir={out_dir})")
            status = 128 + stopper.signal if stopper.signal else 130
            break

        # one step: learning rate for this iteration, gas micro-batches, clip, update
        step_start = time.perf_counter()
        lr = get_lr(iter_num, cfg)
        scale = lr / cfg.learning_rate if cfg.learning_rate > 0 else 0.0
        for opt in optimizers:
            top = cfg.muon_lr if isinstance(opt, Muon) else cfg.learning_rate  # one schedule, two peaks
            for group in opt.param_groups:
                group["lr"] = top * scale
        loss_sum = torch.zeros((), device=device)
        for i, k in enumerate(streams):
            x, y = loaders[k].next_batch()
            # DDP averages gradients across processes after each backward; only the last
            # micro-step's sync is needed, the others just accumulate locally
            sync = not ddp or i == per_rank - 1
            with contextlib.nullcontext() if sync else train_model.no_sync():
                with autocast:  # the forward in bf16/fp16; backward runs in the forward's dtypes
                    _, loss = train_model(x, y)
                loss_sum += loss.detach()
                scaler.scale(loss / per_rank).backward()
        if ddp:
            dist.all_reduce(loss_sum)
        # the mean over the whole step's batch, the same on every process. Checked every step,
        # before the update (one sync per step): a NaN must never reach the weights
        lossf = loss_sum.item() / gas
        if not math.isfinite(lossf):
            kept = (f"the last good checkpoint, {out_dir / 'last.pt'}, is kept" if (out_dir / "last.pt").exists()
                    else "no checkpoint had been written yet")
            say(f"error: the loss is {lossf} at iteration {iter_num}: training diverged. Nothing was "
                f"saved from this step; {kept}. Try a lower --learning_rate, a longer --warmup_iters, "
                f"or --grad_clip=1", file=sys.stderr)
            status = 1
            break
        if cfg.grad_clip > 0:
            for opt in optimizers:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            scaler.step(opt)  # skips the step if fp16 gradients overflowed
        scaler.update()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        # pure training time for the speedrun's clock: the loss.item() above already waited for
        # the GPU; the first step (compilation, allocator warm-up) is reported on its own
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - step_start
        if iter_num == start_iter and ckpt is None:
            if master:
                metrics.log({"kind": "warmup", "iter": iter_num, "seconds": step_time})
        else:
            train_time += step_time

        if iter_num % cfg.log_interval == 0 and master:
            dt = (time.time() - t0) / max(1, iter_num + 1 - last_log)
            tok_per_s = tokens_per_iter / dt
            mfu = flops_per_iter / dt / peak if peak else None
            metrics.log({"kind": "train", "iter": iter_num, "loss": lossf, "lr": lr,
                         "tok_per_s": tok_per_s, "mfu": mfu})
            mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "-"
            if bar.disable:
                print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {tok_per_s:,.0f} tok/s, mfu {mfu_s}")
            bar.set_postfix_str(f"loss {lossf:.4f} lr {lr:.2e} {tok_per_s:,.0f} tok/s mfu {mfu_s}",
                                refresh=False)
            t0, last_log = time.time(), iter_num + 1
        iter_num += 1
        bar.update(1)

    bar.close()
    if master:
        metrics.close()
        if status == 0:
            say(f"done: {iter_num} iterations in {time.time() - t_start:.1f} s, best val loss {best_val_loss:.4f}; "
                f"checkpoints in {out_dir} (ckpt.pt best, last.pt latest); "
                f"sample with: python sample.py --out_dir={out_dir}")
    return status


# -----------------------------------------------------------------------------
# helpers for the run

def peak_flops(device, dtype):
    """bf16/fp16 dense peak of a known GPU, else None (MFU is then not reported: a CPU's peak
    depends on its cores, clock and vector units; pass --peak_flops to get one)."""
    if device.type != "cuda" or dtype == torch.float32:
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def check_compatible(ckpt, mcfg: GPTConfig, meta):
    """A resumed run must rebuild the same model on the same tokens."""
    if ckpt.get("tokenizer") != meta["tokenizer"]:
        raise CheckpointError("the prepared data's tokenizer differs from the checkpoint's (the dataset "
                              "was prepared again, or differently); resume with the same data or start "
                              "a new run in another --out_dir")
    saved = dict(ckpt["model_config"])
    now = asdict(mcfg)
    for key in ("dropout", "attn_impl"):  # these may change between runs: same weights
        saved.pop(key, None), now.pop(key)
    diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise CheckpointError(f"the checkpoint's model does not match this config ({'; '.join(diff)}); "
                              f"resume with the checkpoint's settings or start a new run in another --out_dir")


def stop_requested(stopper: Stopper, device, ddp: bool) -> bool:
    """Did anyone get Ctrl-C / SIGTERM? In DDP all processes must stop at the same step."""
    if not ddp:
        return stopper.signal is not None
    flag = torch.tensor([stopper.signal or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and stopper.signal is None:
        stopper.signal = int(flag.item())
    return bool(flag.item())


def gather_state(loaders, device, ddp):
    """Every RNG of every process: torch (dropout), cuda, numpy, python, and each data stream."""
    mine = {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": numpy_state(), "python": random.getstate(),
            "loaders": {k: loader.state_dict() for k, loader in loaders.items()}}
    everyone = [mine]
    if ddp:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
    # streams are numbered globally, so a run can resume on a different number of processes
    streams = {k: s for r in everyone for k, s in r.pop("loaders").items()}
    return {"per_rank": everyone, "loaders": streams}


def restore_rng(state, loaders, rank, world, device, say):
    for k, loader in loaders.items():
        if k in state["loaders"]:
            loader.load_state_dict(state["loaders"][k])
    if len(state["per_rank"]) != world:
        say(f"note: the checkpoint was written by {len(state['per_rank'])} processes, this run has "
            f"{world}: data resumes exactly, dropout masks are reseeded")
        return
    mine = state["per_rank"][rank]
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)
    set_numpy_state(mine["numpy"])
    random.setstate(mine["python"])


def numpy_state():
    # as plain ints and a tensor: torch.load(weights_only=True) does not load numpy arrays
    s = np.random.get_state(legacy=False)
    return {"key": torch.from_numpy(s["state"]["key"].astype(np.int64)), "pos": s["state"]["pos"],
            "has_gauss": s["has_gauss"], "gauss": s["gauss"]}


def set_numpy_state(s):
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
                         "has_gauss": s["has_gauss"], "gauss": s["gauss"]})


if __name__ == "__main__":
    sys.exit(main())
