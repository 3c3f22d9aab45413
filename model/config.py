"""The model's shape, in one dataclass, checked when it is built.

Every number that decides a tensor's shape lives here, so a checkpoint can store
`asdict(config)` and rebuild the exact same model later. ModelSettings holds every field but
vocab_size, which the data decides: a training run's settings take them from it as they are
(training/config.py), so each is declared here only.
"""

import typing
from dataclasses import dataclass, fields
from typing import Literal

from common.errors import ConfigError


@dataclass
class ModelSettings:
    # -- model --
    block_size: int = 256       # longest context the model ever sees, in tokens
    n_layer: int = 6            # transformer blocks
    n_head: int = 6             # query heads
    n_kv_head: int | None = None  # key/value heads: none = n_head (MHA), fewer = GQA, 1 = MQA
    n_embd: int = 384           # width of the residual stream, C
    dropout: float = 0.0        # the chance a unit is zeroed while training (0 = off)
    bias: bool = False          # biases in Linear layers and LayerNorms (GPT-2 had them)
    pos_emb: Literal["learned", "rope"] = "learned"  # learned absolute positions (GPT-2) or rope (rotary)
    rope_base: float = 10000.0  # RoPE's frequency base
    attn_impl: Literal["sdpa", "explicit"] = "sdpa"  # sdpa (the fused kernel) or explicit (the math written out)
    attn_window: int = 0        # > 0: each token sees its last attn_window tokens only (with rope, decoding runs past block_size); 0 = full causal
    # Options from the modded-nanogpt speedrun line of work; the defaults are GPT-2's choices.
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # rmsnorm: parameter-free (no gain, no bias)
    embed_norm: bool = False    # normalise the embeddings before the first block
    qk_norm: bool = False       # RMS-normalise each head's q and k before the dot product
    mlp_act: Literal["gelu", "gelu_tanh", "relu2"] = "gelu"  # gelu_tanh: GPT-2's tanh approximation; relu2: ReLU squared
    zero_init: bool = False     # residual output projections (and an untied head) start at zero
    tie_embeddings: bool = True  # the head reuses the token embedding matrix
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c), keeps them in (-c, c)
    x0_shortcut: bool = False   # every block also reads the embeddings: a * x + b * x0, a and b learned


@dataclass
class GPTConfig(ModelSettings):
    vocab_size: int = 65        # number of distinct tokens

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"each head gets n_embd / n_head channels")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head != 0:
            raise ConfigError(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): "
                f"each key/value head is shared by n_head / n_kv_head query heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for f in fields(self):  # a Literal field takes one of its choices
            choices = typing.get_args(f.type) if typing.get_origin(f.type) is Literal else None
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(repr, choices))}, "
                                  f"got {getattr(self, f.name)!r}")
        if self.pos_emb == "rope" and self.head_size % 2 != 0:
            raise ConfigError(
                f"RoPE rotates channel pairs, so the head size must be even; "
                f"n_embd / n_head = {self.head_size}")
        if not 0 < self.rope_base < float("inf"):  # written so that nan fails too
            raise ConfigError(f"rope_base must be positive, got {self.rope_base!r}")
        w = self.attn_window
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= self.block_size:
            raise ConfigError(
                f"attn_window must be 0 (full causal attention) or in 1..block_size={self.block_size} "
                f"(each token sees its last attn_window tokens), got {w!r}")
        if not 0 <= self.logit_softcap < float("inf"):
            raise ConfigError(f"logit_softcap must be >= 0 (0 = off), got {self.logit_softcap!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rolling(self) -> bool:
        """Can this model run past block_size? Only a sliding window with rotary positions can: it
        only ever compares tokens fewer than attn_window apart, distances it saw in training, so
        it decodes forever with a rolling KV cache (model/kv_cache.py), never cutting its context.
        Learned positions cannot: their table (wpe) ends at block_size, window or not."""
        return self.attn_window > 0 and self.pos_emb == "rope"

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Rebuild from asdict(config); unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)
