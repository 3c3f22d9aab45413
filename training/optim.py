"""The optimizers and the learning-rate schedule.

Each param group carries its own peak learning rate ("peak_lr"), so the schedule is one
multiplier for all of them: AdamW's learning_rate and Muon's muon_lr rise and fall together.
"""

import math

import torch

from .muon import Muon


def make_optimizers(model, cfg, device: torch.device) -> list:
    """[AdamW], or with optimizer=muon [Muon for the blocks' matrices, AdamW for the rest].

    AdamW decays only the matrices (linear weights, embeddings, an untied head): decaying biases
    and norm gains would only pull them towards 0 for no benefit. Muon's matrices have their own
    muon_weight_decay: decoupled decay shrinks a matrix by lr * wd each step, and Muon's lr is
    far larger than AdamW's, so AdamW's weight_decay there would decay them many times harder."""
    roles = model.parameters_by_role()
    decay = roles["embeddings"] + roles["head"]
    groups = []
    if cfg.optimizer == "muon":
        muon = Muon(roles["matrices"], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                    weight_decay=cfg.muon_weight_decay)
        muon.param_groups[0]["peak_lr"] = cfg.muon_lr
        groups.append(muon)
    else:
        decay = roles["matrices"] + decay
    adamw_groups = [{"params": decay, "weight_decay": cfg.weight_decay, "peak_lr": cfg.learning_rate},
                    {"params": roles["gains"], "weight_decay": 0.0, "peak_lr": cfg.learning_rate}]
    # fused: one kernel for all parameters instead of a loop of small ones (CUDA only here)
    adamw = torch.optim.AdamW([g for g in adamw_groups if g["params"]], lr=cfg.learning_rate,
                              betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    return groups + [adamw]


def lr_scale(it: int, cfg) -> float:
    """The schedule as a multiplier of each group's peak: linear warmup, then cosine decay to
    min_lr / learning_rate at the end of the decay (nanoGPT's schedule), or with lr_schedule=wsd:
    hold the peak, then fall linearly to min_lr over the last cooldown_frac of the decay (the
    loss drops most during that cooldown). The decay ends at lr_decay_iters, or by default at
    max_iters, so a shortened run still anneals."""
    if cfg.learning_rate == 0:
        return 0.0  # learning_rate=0 freezes every group, Muon's too
    if not cfg.decay_lr:
        return 1.0
    floor, end = cfg.min_lr / cfg.learning_rate, cfg.decay_iters
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    if it > end:
        return floor
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(cfg.cooldown_frac * end))
        frac = min(1.0, (end - it) / cooldown)  # 1 until the cooldown starts, then -> 0
        return floor + frac * (1 - floor)
    ratio = (it - cfg.warmup_iters) / max(1, end - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1 - floor)  # cosine: 1 -> floor


MOMENTUM_START = 0.85  # where muon_momentum_warmup starts, as in modded-nanogpt's speedrun


def muon_momentum_at(it: int, cfg) -> float:
    """Muon's momentum at step it: from MOMENTUM_START up to muon_momentum, linearly over the first
    muon_momentum_warmup steps, then constant. A shorter memory early on, while the gradients
    turn fast, and the full one once they settle."""
    if it >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    return MOMENTUM_START + (cfg.muon_momentum - MOMENTUM_START) * it / cfg.muon_momentum_warmup


def set_schedule(optimizers: list, it: int, cfg) -> float:
    """Set every group's learning rate for step it (its peak_lr times lr_scale) and Muon's
    momentum (muon_momentum_at); returns the scale."""
    scale = lr_scale(it, cfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * scale
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum_at(it, cfg)
    return scale


def schedule_warnings(cfg) -> list[str]:
    """Settings that run, but probably not as meant: a schedule that does not fit the run."""
    if not cfg.decay_lr:
        return []
    out = []
    if cfg.lr_decay_iters is not None and cfg.lr_decay_iters > cfg.max_iters:
        last = cfg.learning_rate * lr_scale(cfg.max_iters - 1, cfg)
        out.append(f"lr_decay_iters={cfg.lr_decay_iters} is past max_iters={cfg.max_iters}: the learning "
                   f"rate never finishes its decay (the last step runs at {last:.3g}, min_lr is "
                   f"{cfg.min_lr:g}); leave lr_decay_iters out to decay over the whole run")
    if cfg.warmup_iters >= cfg.max_iters > 0:
        out.append(f"warmup_iters={cfg.warmup_iters} is not shorter than max_iters={cfg.max_iters}: "
                   f"the learning rate never reaches its peak of {cfg.learning_rate:g}")
    elif cfg.lr_schedule == "wsd" and cfg.warmup_iters > cfg.decay_iters - round(cfg.cooldown_frac * cfg.decay_iters):
        out.append(f"warmup_iters={cfg.warmup_iters} runs into the WSD cooldown (the last "
                   f"{cfg.cooldown_frac:g} of {cfg.decay_iters} steps): there is no stable phase")
    return out
