"""An incremental key/value cache for decoding.

Why it works: with a causal mask, token i's key and value depend only on tokens
0..i, so once computed they never change. Decoding one new token therefore needs
only that token's q, k, v; the keys and values of everything before it are read
from here instead of being recomputed.

The buffers are allocated once, at full size, for every layer:
    k, v: (n_layer, B, n_kv_head, max_len, head_size)
and filled left to right; `pos` counts how many positions hold real data. No
torch.cat per step, so memory does not churn and addresses stay fixed.
"""

import torch


class KVCache:
    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_size, device=None, dtype=None):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0  # positions filled so far; the next token goes at index pos

    @classmethod
    def for_model(cls, config, batch_size, device=None, dtype=None, max_len=None):
        return cls(config.n_layer, batch_size, config.n_kv_head, max_len or config.block_size,
                   config.head_size, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def update(self, layer: int, k, v):
        """Store the new k, v (B, nkv, T, hs) at pos .. pos+T-1 and return all keys and
        values so far, (B, nkv, pos+T, hs). `pos` moves on in advance(), once every
        layer has seen the same new tokens."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {T} new positions > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int):
        self.pos += n

    def reset(self):
        """Forget everything; the buffers are reused as they are (stale values are never
        read, because only positions < pos are)."""
        self.pos = 0

    def repeat_batch(self, n: int):
        """Give each batch row n copies, for num_samples continuations of one prefill:
        row b becomes rows b*n .. b*n+n-1. Only the filled part is copied."""
        if n == 1:
            return
        L, B, H, M, D = self.k.shape
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((L, B * n, H, M, D))
            new[:, :, :, :self.pos] = old[:, :, :, :self.pos].repeat_interleave(n, dim=1)
            setattr(self, name, new)
