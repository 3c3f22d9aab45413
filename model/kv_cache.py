"""An incremental key/value cache for decoding, and its rolling form for sliding windows.

Why it works: with a causal mask, token i's key and value depend only on tokens
0..i, so once computed they never change. Decoding one new token therefore needs
only that token's q, k, v; the keys and values of everything before it are read
from here instead of being recomputed.

KVCache: the buffers are allocated once, at full size, for every layer:
    k, v: (n_layer, B, n_kv_head, max_len, head_size)
and filled left to right; `pos` counts how many positions hold real data. No
torch.cat per step, so memory does not churn and addresses stay fixed.

RollingKVCache: for a sliding-window model (attn_window = W) with rotary positions, a
ring of W slots per layer that decoding never fills up (read it after KVCache).
"""

import torch

from .attention import position_mask, visible_keys


class KVCache:
    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_size, device=None, dtype=None,
                 window=0):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.window = window  # the model's attn_window: which keys a query may see
        self.pos = 0  # positions filled so far; the next token goes at index pos

    @classmethod
    def for_model(cls, config, batch_size, device=None, dtype=None, max_len=None):
        return cls(config.n_layer, batch_size, config.n_kv_head, max_len or config.block_size,
                   config.head_size, device=device, dtype=dtype, window=config.attn_window)

    def update(self, layer: int, k, v):
        """Store the new k, v (B, nkv, T, hs) at pos .. pos+T-1 and return all keys and
        values so far, (B, nkv, pos+T, hs), with which of them each new query may see
        (attention.visible_keys: they are positions 0..pos+T-1, in order). `pos` moves on in
        advance(), once every layer has seen the same new tokens."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {T} new positions > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], visible_keys(T, end, self.window, k.device)

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


class RollingKVCache:
    """The KV cache of a sliding-window model with rotary positions: a ring of W = attn_window
    slots per layer, k, v: (n_layer, B, n_kv_head, W, head_size).

    Why W slots are enough: in every layer the query at position p sees keys p-W+1..p only, so
    position p is stored in slot p % W, over position p - W, which no query from p on can see.
    Memory and work per token stay the same however long the text, and nothing is ever cut.
    (What a token saw one layer down is already mixed into its keys, so the model still reaches
    further back than W, and all of that is in the rings too.)

    The ring is not in position order (W = 4, after positions 0..9 the slots hold 8, 9, 6, 7).
    Attention does not care, since a weighted sum is the same in any order and RoPE turned each
    key before it was stored, as long as the mask knows which position each slot holds:
    slot_positions() works it out from `pos`. Same interface as KVCache; max_len is None: no end.
    """

    def __init__(self, n_layer, batch_size, n_kv_head, window, head_size, device=None, dtype=None):
        shape = (n_layer, batch_size, n_kv_head, window, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.window = window
        self.slots = torch.arange(window, device=device)            # (W,) slot indexes
        self.max_len = None  # never full: position p goes to slot p % window
        self.pos = 0         # positions seen so far; the next token is position pos
        self._mask, self._mask_for = None, None  # mask(): the last one built, and for which (pos, T)

    @classmethod
    def for_model(cls, config, batch_size, device=None, dtype=None):
        return cls(config.n_layer, batch_size, config.n_kv_head, config.attn_window,
                   config.head_size, device=device, dtype=dtype)

    def slot_positions(self, last: int):
        """(W,) the position each slot holds once positions 0..last are written: the latest
        p <= last with p % W == slot. Negative: the slot is not written yet (last < W - 1)."""
        return last - (last - self.slots) % self.window

    def update(self, layer: int, k, v):
        """Store the new k, v (B, nkv, T, hs) of positions pos .. pos+T-1. Returns the keys and
        values those T queries attend over, (B, nkv, T_k, hs), and the (T, T_k) bool mask of
        which of them each query may see (or None when it may see them all, see mask())."""
        T, W = k.size(2), self.window
        if T == 1:
            # decoding: the new token's slot holds position pos - W, the one key that has just
            # left its window, so overwrite it first and attend over the ring itself (W keys)
            slot = self.pos % W
            self.k[layer, :, :, slot] = k[:, :, 0]
            self.v[layer, :, :, slot] = v[:, :, 0]
            keys, values = self.k[layer], self.v[layer]
        else:
            # several new tokens (a prompt): new token pos+t overwrites position pos+t-W, which
            # the new queries before it still see. So they attend over the ring as it was and
            # the new keys side by side, (B, nkv, W + T, hs); the mask gives each its band.
            keys = torch.cat([self.k[layer], k], dim=2)
            values = torch.cat([self.v[layer], v], dim=2)
            # then the ring keeps the last W new ones; earlier ones are out of every later window
            n = min(T, W)
            slots = torch.arange(self.pos + T - n, self.pos + T, device=k.device) % W
            self.k[layer].index_copy_(2, slots, k[:, :, T - n:])
            self.v[layer].index_copy_(2, slots, v[:, :, T - n:])
        return keys, values, self.mask(T)

    def mask(self, T: int):
        """(T, T_k) bool: which of the keys update() returns the T new queries (positions
        pos .. pos+T-1) may see. It depends on pos and T alone, so every layer of a step
        shares it: built once per step, at the first layer's call. None once the ring is full
        and one token comes: it sees every slot, and attention needs no mask at all then."""
        if T == 1 and self.pos >= self.window - 1:
            return None
        if self._mask_for != (self.pos, T):
            new_pos = torch.arange(self.pos, self.pos + T, device=self.slots.device)   # (T,)
            if T == 1:
                key_pos = self.slot_positions(self.pos)                   # the ring, pos written
            else:
                key_pos = torch.cat([self.slot_positions(self.pos - 1), new_pos])  # ring as it was + new
            written = key_pos >= 0                        # slots not written yet hold no key
            self._mask = position_mask(new_pos, key_pos, self.window) & written   # (T, T_k)
            self._mask_for = (self.pos, T)
        return self._mask

    def advance(self, n: int):
        self.pos += n

    def reset(self):
        """Forget everything: with pos 0 every slot counts as not written, so whatever the
        buffers still hold is masked."""
        self.pos = 0

    def repeat_batch(self, n: int):
        """Give each batch row n copies, rows b*n .. b*n+n-1, as KVCache.repeat_batch."""
        if n > 1:
            self.k = self.k.repeat_interleave(n, dim=1)
            self.v = self.v.repeat_interleave(n, dim=1)
