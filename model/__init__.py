"""A minimal GPT. Read in this order: config.py, attention.py, kv_cache.py, gpt.py, generate.py;
then fast_decode.py (decoding on a GPU) and checkpoint.py (saving, loading, load_run)."""

from .attention import (CausalSelfAttention, attention, causal_mask, causal_softmax, position_mask,
                        sdpa_attention)
from .config import ConfigError, GPTConfig
from .generate import decode, eval_mode, generate, sample_next
from .gpt import GPT
from .kv_cache import KVCache, RollingKVCache
from .checkpoint import load_run

__all__ = ["GPT", "GPTConfig", "ConfigError", "KVCache", "RollingKVCache", "CausalSelfAttention",
           "attention", "causal_mask", "causal_softmax", "position_mask", "sdpa_attention", "decode",
           "generate", "sample_next", "load_run", "eval_mode"]
