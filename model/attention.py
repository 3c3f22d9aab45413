"""Causal multi-head self-attention, written out so every step can be read.

The core idea, for one head:
    Q = X W_q, K = X W_k, V = X W_v            each token asks (Q), offers (K), carries (V)
    scores  = Q K^T / sqrt(head_size)          how well query i matches key j
    scores  = -inf where j is in i's future     the causal mask: no peeking ahead
    weights = softmax(scores, over the keys)   each row sums to 1
    out     = weights V                        a weighted average of the values
Several heads do this side by side on slices of the channels; their outputs are
concatenated and mixed by one more matrix, W_O.

Sliding-window attention (attn_window = W > 0, as in Mistral) masks more: query i also
ignores keys W or more positions back, so it sees keys i-W+1..i, a band under the diagonal.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Every norm in the model divides by sqrt(mean(x^2) + NORM_EPS): one eps, the same in every dtype
# (rms_norm's default is the dtype's machine epsilon, 1.2e-7 in float32 but 7.8e-3 in bfloat16).
# 1e-5 is LayerNorm's default, and what GPT-2 was trained with.
NORM_EPS = 1e-5


def rms_norm(x):
    """x / rms(x) over the last dimension, no gain: every vector rescaled to unit root-mean-square."""
    return F.rms_norm(x, (x.size(-1),), eps=NORM_EPS)


# The mask that says "the plain causal triangle": SDPA draws it itself (is_causal=True, its fast
# path), so no (t_q, t_k) tensor is built for it. None means no mask: every key is visible.
CAUSAL = "causal"


def causal_mask(t_q: int, t_k: int, window: int = 0, device=None) -> torch.Tensor:
    """(t_q, t_k) bool, True where query i may look at key j.

    The queries are the *last* t_q of the t_k positions (with a KV cache the keys
    include everything already seen), so query i sits at absolute position
    t_k - t_q + i and sees keys j <= that. With t_q == t_k this is the familiar
    lower triangle; with t_q == 1 the single new token sees every key. With a window,
    only the band of the last `window` positions of each row is left.
    """
    q_pos = torch.arange(t_k - t_q, t_k, device=device)                # (t_q,)
    k_pos = torch.arange(t_k, device=device)                           # (t_k,)
    return position_mask(q_pos, k_pos, window)


def position_mask(q_pos, k_pos, window: int = 0) -> torch.Tensor:
    """The same rule from absolute positions: q_pos (t_q,), k_pos (t_k,) -> (t_q, t_k) bool.
    A key is visible if it is not in the query's future and, with window > 0, fewer than
    `window` positions back: i - window < j <= i. The keys may come in any order (a rolling
    KV cache keeps them in a ring), as long as k_pos says where each one came from."""
    i, j = q_pos.unsqueeze(1), k_pos.unsqueeze(0)                      # (t_q, 1), (1, t_k)
    mask = j <= i                                                      # not in the future
    if window > 0:
        mask = mask & (j > i - window)                                 # nor out of the window
    return mask


def visible_keys(t_q: int, t_k: int, window: int = 0, device=None):
    """Which keys the last t_q of t_k positions (in order) may see, in the cheapest form that
    says it exactly: None (every key: one new token, no window reaching past the first key),
    CAUSAL (the plain triangle), or the (t_q, t_k) bool mask of causal_mask()."""
    far = window > 0 and t_k > window                  # some key is out of some query's window
    if t_q == 1 and not far:
        return None
    if t_q == t_k and not far:
        return CAUSAL
    return causal_mask(t_q, t_k, window, device)


def causal_softmax(scores, mask=CAUSAL):
    """softmax over the keys after hiding every key the query may not see. scores (..., t_q, t_k);
    mask as visible_keys() gives it. Hidden entries are set to -inf, so their weight is exactly 0
    and the visible weights in each row still sum to 1."""
    if mask is CAUSAL:
        mask = causal_mask(scores.size(-2), scores.size(-1), device=scores.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)


def attention(q, k, v, mask=CAUSAL, dropout_p: float = 0.0, return_weights: bool = False):
    """Scaled dot-product attention in plain PyTorch: matmul, mask, softmax, matmul.

    q: (..., t_q, hs), k and v: (..., t_k, hs). Returns (..., t_q, hs) and, if asked, the
    attention weights (..., t_q, t_k). mask: which keys each query may see (visible_keys());
    mask=None is the unmasked attention of the textbook examples, where every token sees every
    other; a GPT is causal.
    """
    hs = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)          # (..., t_q, t_k)
    # dividing by sqrt(hs) keeps the scores' spread near 1 whatever the head size,
    # so the softmax does not saturate into a one-hot at initialisation
    weights = causal_softmax(scores, mask)                    # hidden keys get weight exactly 0
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v                                         # (..., t_q, hs)
    return (out, weights) if return_weights else out


def sdpa_attention(q, k, v, mask=CAUSAL, dropout_p: float = 0.0):
    """The same computation through PyTorch's fused kernel (flash / memory-efficient)."""
    if mask is CAUSAL:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Rotary:
    """Rotary position embedding (RoPE): rotate each (x1, x2) channel pair of q and k by an
    angle proportional to the token's position, so q . k depends on the *distance* between
    two tokens rather than on where they sit.

    The angles are computed for the positions asked for, not read from a table that ends at
    block_size: a sliding-window model decodes past block_size (model/config.py, `rolling`)."""

    def __init__(self, head_size: int, base: float = 10000.0):
        self.head_size, self.base = head_size, base

    def cos_sin(self, positions):
        """positions (T,) -> (cos, sin), each (T, hs/2): channel pair c turns by position * f_c.
        In float32 whatever the model's dtype: a bfloat16 angle is whole radians off by position
        1000."""
        hs = self.head_size
        inv_freq = 1.0 / (self.base ** (torch.arange(0, hs, 2, device=positions.device).float() / hs))
        angles = torch.outer(positions.float(), inv_freq)                  # (T, hs/2)
        return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """x (..., T, hs) turned by the angles whose cos and sin are (T, hs/2)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)                                   # pair channel i with i + hs/2
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer: int = 0):
        super().__init__()
        self.layer = layer          # which slice of a KV cache is this layer's
        self.keep_weights = False   # set by GPT.attention_maps: run the explicit path, keep its weights
        self.weights = None         # (B, nh, T, T_k) from the last forward, when keep_weights
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_size = config.head_size
        self.dropout = config.dropout
        self.impl = config.attn_impl
        self.qk_norm = config.qk_norm
        self.window = config.attn_window  # 0: full causal attention
        C, hs = config.n_embd, config.head_size
        # one Linear per role; K and V are narrower when heads share them (GQA / MQA)
        self.q_proj = nn.Linear(C, self.n_head * hs, bias=config.bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * hs, bias=config.bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * hs, bias=config.bias)
        self.o_proj = nn.Linear(self.n_head * hs, C, bias=config.bias)  # W_O
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache=None):
        """x: (B, T, C) -> (B, T, C). rope: (cos, sin) of the tokens' positions (Rotary.cos_sin).
        With a cache, x holds only the new tokens, and their keys and values are stored in it."""
        B, T, C = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_size
        # project, then split the channels into heads: (B, T, nh*hs) -> (B, nh, T, hs)
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)
        k = self.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)
        v = self.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)
        if self.qk_norm:  # unit-RMS queries and keys bound the scores: no softmax can saturate
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:  # turn q and k by their positions
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is None:
            mask = visible_keys(T, T, self.window, x.device)
        else:  # past keys never change: the cache returns them all, and which each query may see
            k, v, mask = cache.update(self.layer, k, v)          # (B, nkv, T_k, hs)
        if nkv < nh:  # GQA: each group of nh / nkv query heads shares one key/value head
            k = k.repeat_interleave(nh // nkv, dim=1)            # (B, nh, T_k, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)
        y = self.attend(q, k, v, mask)                           # (B, nh, T, hs)
        # concatenate the heads back side by side: (B, nh, T, hs) -> (B, T, nh*hs), then W_O
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)
        return self.resid_drop(self.o_proj(y))

    def attend(self, q, k, v, mask):
        """softmax(q k^T / sqrt(hs)) v over the keys the mask leaves: written out (attn_impl=
        "explicit", and for attention_maps, which keeps the weights) or through SDPA."""
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa" and not self.keep_weights:
            return sdpa_attention(q, k, v, mask, p)
        y, w = attention(q, k, v, mask, p, return_weights=True)
        self.weights = w if self.keep_weights else None
        return y
