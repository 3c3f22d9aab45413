"""Checkpoints: written atomically, read safely, with a clear message when they are bad.

A checkpoint is a plain dict of tensors and JSON-like values:
    format_version, model (state_dict), model_config (asdict of GPTConfig),
    tokenizer (the tokenizer's to_dict()), and whatever training adds
    (config, optimizer, scaler, iter_num, best_val_loss, rng, ...).
It is loaded with torch.load(weights_only=True), so opening one cannot run code.
"""

import os
import tempfile
from pathlib import Path

import torch

from .config import ConfigError, GPTConfig
from .gpt import GPT

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt or does not fit this code."""


def save_checkpoint(path, state: dict):
    """Write to a temporary file in the same folder, then rename over `path`: a crash
    mid-write leaves the previous checkpoint intact, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
