"""Checkpoints: written atomically, read safely, with a clear message when they are bad.

A checkpoint is a plain dict of tensors and JSON-like values:
    format_version, model (state_dict), model_config (asdict of GPTConfig),
    tokenizer (the tokenizer's to_dict()), and whatever training adds
    (config, optimizer, scaler, iter_num, best_val_loss, rng, ...).
It is loaded with torch.load(weights_only=True), so opening one cannot run code.
"""

from pathlib import Path

import torch

from common.errors import ConfigError, UserError
from common.files import atomic_write
from data import tokenizer_from_dict
from .config import GPTConfig
from .gpt import GPT

FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt or does not fit this code."""


def save_checkpoint(path, state: dict):
    """Written atomically: a crash mid-write leaves the previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first (python train.py --out_dir=...) "
                              f"or point at an existing file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or holding pickled code
        # torch's own message suggests weights_only=False, which we never do: don't echo it
        raise CheckpointError(f"{path} is not a readable checkpoint: it is corrupt, truncated, or not "
                              f"written by train.py ({type(e).__name__}); use another checkpoint "
                              f"(ckpt.pt or last.pt) or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (missing model weights or config)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt.get('format_version')!r}; "
                              f"this code reads version {FORMAT_VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> GPT:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        config = GPTConfig.from_dict(dict(ckpt["model_config"]))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint's model config does not fit this code: {e}") from None
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint's weights do not match its model config: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device)


def load_run(out_dir="out", device="cpu", ckpt: str = "ckpt.pt", dtype=None):
    """(model, tokenizer) of a training run's folder, ready to use:

        from model import load_run
        model, tokenizer = load_run("out", device="cpu")       # or ckpt="last.pt"
        ids = tokenizer.encode("ROMEO:")                        # str -> list[int]
        text = tokenizer.decode(model.generate(torch.tensor([ids]), 100)[0].tolist())

    The model is in eval mode, on `device`, in `dtype` (default: the stored float32). Casting
    the weights themselves (no autocast) means k and v, and the cache that stores them, are
    computed in that dtype. A missing folder or checkpoint is a CheckpointError naming the fix."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CheckpointError(f"--out_dir={out_dir} does not exist: train first "
                              f"(python train.py --out_dir={out_dir}) or point at a training run's folder")
    path = out_dir / ckpt
    if not path.is_file():
        found = sorted(p.name for p in out_dir.glob("*.pt"))
        hint = f"it has {', '.join(found)}: pick one with --ckpt=NAME" if found else \
            "it has no checkpoints yet: train first, or wait for the first evaluation to save one"
        raise CheckpointError(f"no checkpoint {ckpt} in {out_dir}; {hint}")
    state = load_checkpoint(path)  # weights_only: opening it cannot run code
    if "tokenizer" not in state:
        raise CheckpointError(f"{path} has no tokenizer stored in it, so its tokens cannot be turned "
                              f"into text; use a checkpoint written by train.py")
    tokenizer = tokenizer_from_dict(state["tokenizer"])
    model = model_from_checkpoint(state, device)
    return model.to(dtype).eval() if dtype is not None else model.eval(), tokenizer
