"""Every setting of a training run, in one typed dataclass, and where a run's settings come from.

Layers, later wins:
    TrainConfig's defaults  <  no config file given: configs/shakespeare.toml on a GPU,
                               configs/cpu.toml without one
                            or the checkpoint's own settings (--init_from=resume)
                            <  the config file  <  --key=value
"""

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from common.device import resolve_device
from common.errors import ConfigError
from configs import HIDDEN, build, fields_of, load_config_file, read_args, read_config_file, split_args
from data.tokenizers import HUB_NAMES
from model.checkpoint import CheckpointError, load_checkpoint
from model.config import GPTConfig, ModelSettings


@dataclass
class TrainConfig(ModelSettings):  # the model's settings are ModelSettings' fields (model/config.py)
    # -- data --
    dataset: str = "shakespeare"        # shakespeare (offline), tinyshakespeare, a .txt file / folder, Parquet / JSON-lines files, or hf:OWNER/NAME
    tokenizer: Literal["char", "gpt2", "bpe"] = "char"  # characters, GPT-2's BPE, or a BPE trained on the corpus
    tokenizer_vocab_size: int | None = None  # bpe only; none = data's default (2048)
    bpe_sample_mb: int = 64             # bpe only: train it on a seeded sample of at most this much of the train split
    hf_column: str | None = None        # rows (Parquet, JSON lines, hf:): the text column; none = text
    hf_split: str | None = None         # hf: the dataset's split to read; none = train
    hf_config: str | None = None        # hf: the dataset's configuration, where it has several
    data_source: str | None = None      # a local copy of tinyshakespeare's input.txt (no download)
    data_root: str | None = field(default=None, metadata=HIDDEN)  # where prepared datasets live; none = data/prepared
    # -- optimizer and schedule --
    batch_size: int = 64                # sequences per micro-batch (per process)
    gradient_accumulation_steps: int | None = None  # micro-batches per step over all processes; none = one per process
    max_iters: int = 5000               # optimizer steps in all
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for the blocks' matrices, AdamW for the rest
    learning_rate: float = 1e-3         # peak, reached after warmup
    weight_decay: float = 0.1           # AdamW's, on matrices only (Muon's matrices: muon_weight_decay)
    beta1: float = 0.9                  # AdamW's momentum
    beta2: float = 0.99                 # AdamW's decay of the squared gradients' average
    grad_clip: float = 1.0              # clip the gradient's global norm to this; 0 = off
    muon_lr: float = 0.02               # Muon's peak learning rate (the schedule scales it like learning_rate)
    muon_momentum: float = 0.95         # Muon's momentum
    muon_momentum_warmup: int = 0       # Muon's momentum rises linearly from 0.85 to muon_momentum over this many steps
    muon_weight_decay: float = 0.0      # Muon's own decoupled decay: a muon_lr*muon_weight_decay shrink per step; 0: decay did no better in the CPU speedrun (docs/speedrun.md)
    decay_lr: bool = True               # false: constant learning_rate
    lr_schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warmup, stable, linear cooldown to min_lr
    warmup_iters: int = 100             # linear warmup from ~0 to learning_rate
    lr_decay_iters: int | None = None   # the decay ends here; none = max_iters
    min_lr: float = 1e-4                # after decay (usually learning_rate / 10)
    cooldown_frac: float = 0.3          # wsd: the last fraction of the decay spent cooling down
    # -- evaluation and checkpoints --
    out_dir: str = "out"                # checkpoints (ckpt.pt best, last.pt latest), metrics.jsonl, loss.svg
    init_from: str = field(default="scratch", metadata={"help": f"scratch; resume (continue out_dir/last.pt exactly); or GPT-2's weights: {', '.join(HUB_NAMES)} or a Hugging Face GPT-2 folder"})
    eval_interval: int = 250            # evaluate (and write last.pt) every this many steps
    eval_iters: int = 200               # batches per split in each evaluation
    eval_full_val: bool = False         # val loss from one exact pass over the whole val split (up to eval_val_tokens)
    eval_val_tokens: int = 4_194_304    # a bigger val split is read as a fixed, seeded subset of its windows this big; 0 = all
    eval_at_start: bool = True          # also evaluate before the first step (false: a speedrun's seconds)
    always_save_checkpoint: bool = True  # write last.pt at every eval (false: only at the end)
    stop_at_val_loss: float | None = field(default=None, metadata=HIDDEN)  # stop as soon as an eval reaches this val loss
    # -- system --
    device: str = "auto"                # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the device's rule for training (common/device.py, default_dtype)
    compile: bool | None = None         # torch.compile the model; none = on CUDA only
    seed: int = 1337                    # the weights' init, the batches and dropout follow from it
    data_on_device: bool | None = None  # keep the train split on the device (one copy per process), gather batches there; none = when it fits (data/loader.py)
    # -- logging --
    log_interval: int = 10              # a metrics line every this many steps
    peak_flops: float | None = None     # the device's peak FLOP/s for MFU; none = known GPUs only
    wandb_log: bool = False             # log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "qkvgpt"       # the Weights & Biases project
    wandb_run_name: str | None = None   # none = out_dir and the start time

    def __post_init__(self):
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "muon_momentum_warmup", "eval_val_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "muon_weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:  # also catches nan
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.cooldown_frac <= 1:
            raise ConfigError(f"cooldown_frac must be in [0, 1], got {self.cooldown_frac}")
        if not self.muon_lr >= 0 or not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"muon_lr must be >= 0 and muon_momentum in [0, 1), got "
                              f"{self.muon_lr} and {self.muon_momentum}")
        if self.decay_lr and self.min_lr > self.learning_rate > 0:  # 0 freezes every group: no decay
            raise ConfigError(f"min_lr={self.min_lr:g} is above learning_rate={self.learning_rate:g}: the decay "
                              f"would raise the rate; set --min_lr below it (often learning_rate / 10, here "
                              f"--min_lr={self.learning_rate / 10:g}), or --decay_lr=false for a constant rate")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")
        model_config(self, vocab_size=1)  # the model's own checks, now rather than after data preparation

    @property
    def pretrained(self) -> bool:
        """init_from names GPT-2's weights (a name or a folder), to fine-tune."""
        return self.init_from not in ("scratch", "resume")

    @property
    def decay_iters(self) -> int:
        """Where the learning-rate decay ends: lr_decay_iters, or the end of the run."""
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters


MODEL_FIELDS = tuple(f.name for f in fields(ModelSettings))  # GPTConfig's but vocab_size, which the data decides
# what a resumed run must keep: the model's shape, its data, its optimizers (their states are in
# the checkpoint) and its seed (its random streams continue from the checkpoint). Dropout and the
# attention path may change, since they compute with the same weights; every other setting applies.
LOCKED = tuple(k for k in MODEL_FIELDS if k not in ("dropout", "attn_impl")) + \
    ("dataset", "tokenizer", "tokenizer_vocab_size", "bpe_sample_mb", "hf_column", "hf_split", "hf_config",
     "optimizer", "seed")


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, **{k: getattr(cfg, k) for k in MODEL_FIELDS})


DESCRIPTION = """Train a GPT. With no config file the defaults are sized for the machine: the full
configs/shakespeare.toml on a GPU, configs/cpu.toml (the speedrun recipe, under a minute on two cores) without one."""


def load_settings(argv: list[str]) -> tuple[TrainConfig, dict | None, str]:
    """(settings, the checkpoint to resume or None, a line saying where the settings came from)."""
    path, values = read_args(TrainConfig, argv, prog="train.py", description=DESCRIPTION, under=machine_default)
    if values.get("init_from") == "resume":
        return resume_settings(path, values)
    origin = f"config: {path}"
    if path is None:
        origin = "config: configs/shakespeare.toml, the default on a GPU"
        if machine_default(path, values)[1] == "cpu.toml":
            origin = "config: configs/cpu.toml, the CPU-sized default (no GPU in use; on a GPU " \
                     "`python train.py` runs the full configs/shakespeare.toml)"
    cfg = build(TrainConfig, values)
    if cfg.pretrained:
        origin += f", the model's shape from {cfg.init_from}"
        fields_ = fields_of(TrainConfig)
        asked = {k for k, _ in split_args(argv, fields_)[1]} | set(read_config_file(path, fields_) if path else ())
        cfg = pretrained_settings(cfg, asked)
    return cfg, None, origin


FINETUNE_FREE = ("dropout", "attn_impl", "block_size")  # what a fine-tune may set: the weights stay valid


def pretrained_settings(cfg: TrainConfig, asked: set = frozenset()) -> TrainConfig:
    """Fine-tuning GPT-2: its weights decide the model's shape, so its config replaces the model
    settings (block_size may only shorten it; dropout and the attention path stay ours). A model
    setting asked for (asked: the keys the config file and the command line set) that the
    weights do not have is refused, not dropped. A name is resolved to its folder once, here (on
    the hub: a download or a cache look-up), and the run reads the weights and the tokenizer from
    that folder."""
    from model.pretrained import pretrained_config, resolve  # only fine-tuning needs them
    if cfg.tokenizer != "gpt2":
        raise ConfigError(f"init_from={cfg.init_from} reads text with GPT-2's own tokenizer; add "
                          f"--tokenizer=gpt2 (the model's embeddings are for its tokens)")
    folder = resolve(cfg.init_from)
    shape = pretrained_config(folder, block_size=cfg.block_size)
    clash = [f"{k}={getattr(cfg, k)} (the weights have {getattr(shape, k)})" for k in MODEL_FIELDS
             if k in asked and k not in FINETUNE_FREE and getattr(cfg, k) != getattr(shape, k)
             and not (k == "n_kv_head" and cfg.n_kv_head is None and shape.n_kv_head == shape.n_head)]
    if clash:
        raise ConfigError(f"init_from={cfg.init_from} takes the model's shape from its weights, which cannot "
                          f"compute {', '.join(clash)}; leave those settings out (a fine-tune may set "
                          f"{', '.join(FINETUNE_FREE[:-1])} and a shorter block_size)")
    return replace(cfg, init_from=str(folder),
                   **{k: getattr(shape, k) for k in MODEL_FIELDS if k not in ("dropout", "attn_impl")})


def machine_default(path, values: dict) -> tuple[dict, str | None]:
    """The layer under a run's settings when no config file is given: configs/shakespeare.toml on
    a GPU, configs/cpu.toml where no GPU will run (the full run would take hours on a CPU);
    nothing on resume."""
    if path is not None or values.get("init_from") == "resume":
        return {}, None
    try:
        on_gpu = resolve_device(values.get("device", "auto")).type == "cuda"
    except ConfigError:
        on_gpu = False  # a bad --device is reported when the run starts
    name = "shakespeare" if on_gpu else "cpu"
    return load_config_file(TrainConfig, name), f"{name}.toml"


def resume_file(out_dir: Path) -> Path:
    """The checkpoint a resume continues: last.pt, or in a run that stopped before writing one
    (always_save_checkpoint=false writes it only at the end) its best, ckpt.pt, which holds the
    same training state."""
    last = Path(out_dir) / "last.pt"
    return last if last.exists() or not (Path(out_dir) / "ckpt.pt").exists() else Path(out_dir) / "ckpt.pt"


def resume_settings(path, values: dict):
    """The checkpoint's settings under the file and the command line, which may change anything
    but what LOCKED names."""
    out_dir = Path(values.get("out_dir", TrainConfig.out_dir))
    where = resume_file(out_dir)
    if not where.exists():
        raise CheckpointError(f"nothing to resume: {out_dir} holds neither last.pt nor ckpt.pt; point "
                              f"--out_dir at an earlier run, or start a new one without --init_from=resume")
    ckpt = load_checkpoint(where)
    if not all(k in ckpt for k in ("config", "optimizer", "iter_num", "rng")):
        raise CheckpointError(f"{where} holds weights but no training state; "
                              f"it cannot be resumed (start a new run in another --out_dir)")
    known = {f.name for f in fields(TrainConfig)}
    base = {k: v for k, v in ckpt["config"].items() if k in known}
    for key in LOCKED:
        if key in values and values[key] != base.get(key):
            raise ConfigError(
                f"{where} was trained with {key}={base.get(key)}, but {key}={values[key]} "
                f"was asked for; leave {key} out to resume, or start a new run in another --out_dir")
    values["out_dir"] = str(out_dir)  # where it is now, wherever it was trained
    origin = f"config: resumed from {where} (iteration {ckpt['iter_num']}" + \
        ("; there is no last.pt: the run stopped before writing one, so it continues from its best)"
         if where.name != "last.pt" else ")") + (f", then {path}" if path else "")
    return build(TrainConfig, {**base, **values}), ckpt, origin
