"""The lesson's "what if" versions of attention, made from outside the model: nobody trains with
them, so model/ has no switch for them.

    LabAttention        CausalSelfAttention whose attend() can scale the scores another way,
                        drop the causal mask, or silence some heads
    lab_attention(m)    every block of a GPT gets a LabAttention with the same weights
    set_projections(m)  "three" (the model's own), "shared" (one Linear as Q, K and V) or "none"
                        (Q = K = V = the block's input)
"""

import math

import torch
import torch.nn as nn

from model import CausalSelfAttention


class LabAttention(CausalSelfAttention):
    def __init__(self, config, layer: int = 0):
        super().__init__(config, layer)
        self.scale = None        # None: the model's 1 / sqrt(head_size); else scores = q k^T * scale
        self.see_future = False  # True: no causal mask, every query sees every key of its window
        self.head_keep = None    # (nh,) tensor: each head's output multiplied by it (0 = silenced)

    def attend(self, q, k, v, mask):                       # q (B, nh, T, hs), k and v (B, nh, T_k, hs)
        if self.scale is not None:  # attend() divides by sqrt(hs): undo that, then apply scale
            q = q * (self.scale * math.sqrt(self.head_size))
        if self.see_future:
            # unmasked in a full forward; a cached decode step still sees the past only, as there
            # is no future in the cache: the bug as sample.py would meet it
            mask = None
        y = super().attend(q, k, v, mask)                  # (B, nh, T, hs)
        if self.head_keep is not None:
            y = y * self.head_keep.to(y.dtype).view(1, -1, 1, 1)
        return y


def lab_attention(model) -> list[LabAttention]:
    """Swap every block's attention for a LabAttention holding the same weights; returns them.
    (Building a module draws its own random init, overwritten at once: the caller's RNG is kept.)"""
    out = []
    for block in model.blocks:
        with torch.random.fork_rng(devices=[]):
            attn = LabAttention(model.config, block.attn.layer)
        attn.load_state_dict(block.attn.state_dict())
        block.attn = attn
        out.append(attn)
    return out


PROJECTIONS = ("three", "shared", "none")


def set_projections(model, how: str):
    """three: separate W_q, W_k, W_v (the model as built). shared: W_k and W_v become W_q, one
    Linear, so q = k = v = x W. none: q = k = v = x, the lesson's worked example (Q = K = V = X),
    which needs n_head * head_size == n_embd (so MHA: no GQA)."""
    if how not in PROJECTIONS:
        raise ValueError(f"projections must be one of {PROJECTIONS}, got {how!r}")
    for block in model.blocks:
        a = block.attn
        if how == "shared":
            a.k_proj = a.v_proj = a.q_proj
        elif how == "none":
            a.q_proj = a.k_proj = a.v_proj = nn.Identity()
    return model
