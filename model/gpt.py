"""The GPT: token (+ position) embeddings, a stack of pre-norm transformer blocks,
a final norm and a language-model head that scores every vocabulary entry.

    idx (B, T) -> embeddings (B, T, C) -> [block] x n_layer -> norm -> logits (B, T, V)

Each block is  x = x + attn(norm(x));  x = x + mlp(norm(x))  : attention lets tokens
exchange information, the MLP then processes each token on its own.
"""

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import NORM_EPS, CausalSelfAttention, Rotary, rms_norm
from .config import GPTConfig
from .generate import generate
from .kernels import phase_kernels
from .kv_cache import KVCache, RollingKVCache


class RMSNorm(nn.Module):
    """x / rms(x): rescale each token's vector to unit root-mean-square. No learned gain,
    no bias, no mean subtraction: cheaper than LayerNorm and works as well here."""

    def forward(self, x):
        return rms_norm(x)


def make_norm(config):
    if config.norm == "rmsnorm":
        return RMSNorm()
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.act = config.mlp_act
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):                                  # (B, T, C)
        h = self.fc(x)                                     # widen 4x: (B, T, 4C)
        if self.act == "gelu":
            h = F.gelu(h)                                  # exact: x * Phi(x), Phi = normal CDF
        elif self.act == "gelu_tanh":
            # GPT-2 was trained with the tanh approximation of Phi; its weights need this one
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.relu(h).square()
        return self.drop(self.proj(h))                     # back to C


class Block(nn.Module):
    def __init__(self, config, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        # x0_shortcut: the block reads a * x + b * x0, x0 the embeddings; learned, from (1, 0)
        self.x0_mix = nn.Parameter(torch.tensor([1.0, 0.0])) if config.x0_shortcut else None

    def forward(self, x, x0, rope=None, cache=None):
        x = self.shortcut(x, x0)
        x = x + self.attn(self.ln_1(x), rope, cache)  # the residual stream carries the signal on
        x = x + self.mlp(self.ln_2(x))
        return x

    def shortcut(self, x, x0):
        """With x0_shortcut, every block also sees the embeddings directly, not only what the
        blocks below left of them in the residual stream."""
        if self.x0_mix is None:
            return x
        return self.x0_mix[0] * x + self.x0_mix[1] * x0


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)           # token -> vector
        if config.pos_emb == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)       # position -> vector
            self.rotary = None
        else:
            self.wpe = None
            self.rotary = Rotary(config.head_size, config.rope_base)
        self.ln_e = make_norm(config) if config.embed_norm else nn.Identity()
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)])
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying: the same matrix reads tokens in and scores them out (fewer
            # parameters, and it trains better at GPT-2's scale)
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self):
        """GPT-2's initialisation, each weight named. Every block adds two outputs to the
        residual stream (attention's W_O and the MLP's down projection); scaling their init by
        1/sqrt(2 * n_layer) keeps the stream's variance from growing with depth. With zero_init
        those two, and an untied head, start at exactly zero instead: each block starts as the
        identity and the head predicts uniformly (gradients still flow: their inputs are not 0)."""
        cfg = self.config
        std, resid_std = 0.02, 0.02 / math.sqrt(2 * cfg.n_layer)
        nn.init.normal_(self.wte.weight, std=std)
        if self.wpe is not None:
            nn.init.normal_(self.wpe.weight, std=std)
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            residual_outputs = (attn.o_proj, mlp.proj)
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc, mlp.proj):
                if linear not in residual_outputs:
                    nn.init.normal_(linear.weight, std=std)
                elif cfg.zero_init:
                    nn.init.zeros_(linear.weight)
                else:
                    nn.init.normal_(linear.weight, std=resid_std)
        if cfg.zero_init and not cfg.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)
        else:  # tied: the token table is drawn again here; every seeded run follows this order of draws
            nn.init.normal_(self.lm_head.weight, std=std)
        for module in self.modules():  # biases start at 0 (norm gains keep their 1)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def parameters_by_role(self) -> dict[str, list]:
        """Every trainable parameter once, by what it does, so an optimizer can treat each role
        its own way (training/optim.py):
            matrices    the blocks' 2-D weights: linear maps of the hidden state (q, k, v, o, MLP)
            embeddings  the token table (which is also the head when tied) and the position table
            head        the untied output head (empty when tied)
            gains       norm gains and every bias: 1-D vectors"""
        roles = {"matrices": [], "embeddings": [], "head": [], "gains": []}
        embeddings = [self.wte.weight] + ([self.wpe.weight] if self.wpe is not None else [])
        for p in self.parameters():  # a tied weight is listed once
            if not p.requires_grad:
                continue
            if any(p is e for e in embeddings):
                roles["embeddings"].append(p)
            elif p is self.lm_head.weight:
                roles["head"].append(p)
            elif p.dim() < 2:
                roles["gains"].append(p)
            else:
                roles["matrices"].append(p)
        return roles

    def num_params(self) -> int:
        """Parameter count without the position table (the token table is counted once, as it
        doubles as the head)."""
        wpe = self.wpe.weight.numel() if self.wpe is not None else 0
        return sum(p.numel() for p in self.parameters()) - wpe  # a tied head's weight is counted once

    def forward(self, idx, targets=None, *, cache: KVCache | RollingKVCache | None = None,
                last_only: bool = False):
        """idx: (B, T) token ids. Returns (logits, loss).

        targets (B, T): next-token ids; the loss is their mean cross-entropy (-1 = ignore).
        cache: decode incrementally; idx holds only the new tokens, at positions cache.pos...
        last_only: compute logits for the last position only, (B, 1, V) (generation needs no more).

        Positions end at block_size, except in a sliding-window model with rotary positions
        (config.rolling): it runs on for as long as the text goes (the whole text at once, or
        in pieces through a RollingKVCache).
        """
        B, T = idx.size()
        pos = cache.pos if cache is not None else 0
        bs = self.config.block_size
        if pos + T > bs and not self.config.rolling:
            why = (" (attn_window does not lift this with learned positions: their table ends at "
                   "block_size; pos_emb='rope' does)" if self.config.attn_window else "")
            raise ValueError(f"sequence of {pos + T} tokens is longer than the model's block_size "
                             f"{bs}; crop the input to its last {bs} tokens{why}")
        positions = torch.arange(pos, pos + T, device=idx.device)             # (T,)
        x = self.wte(idx)                                                      # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)                                        # (T, C) broadcast
        # RoPE's angles at these positions, once for every layer: (cos, sin), each (T, hs/2)
        rope = self.rotary.cos_sin(positions) if self.rotary is not None else None
        x = x0 = self.drop(self.ln_e(x))
        with phase_kernels(self.training, cache is not None, T):  # which fused kernels (kernels.py)
            for block in self.blocks:
                x = block(x, x0, rope, cache)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)
        if targets is None:
            logits = self.head(x[:, -1:] if last_only else x)                  # (B, T, V)
            return logits, None
        logits = self.head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def head(self, x):
        """Scores for every vocabulary entry, (B, T, V); optionally soft-capped."""
        logits = self.lm_head(x)
        c = self.config.logit_softcap
        if c > 0:
            # tanh squashes smoothly into (-c, c): no logit can run away and blow up the loss
            logits = c * torch.tanh(logits / c)
        return logits

    @torch.no_grad()
    def attention_maps(self, idx) -> list:
        """Attention weights of every layer for idx (B, T), from the explicit path:
        a list of n_layer tensors (B, nh, T, T)."""
        attns = [block.attn for block in self.blocks]
        for attn in attns:
            attn.keep_weights = True
        try:
            self(idx)
            return [attn.weights for attn in attns]
        finally:
            for attn in attns:
                attn.keep_weights, attn.weights = False, None

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token: 6 per parameter (forward + backward) plus the attention
        matmuls, 12 * L * C * T (the PaLM paper's estimate, as nanoGPT uses)."""
        T = T or self.config.block_size
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * T

    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache | RollingKVCache:
        """The cache this model decodes with: a ring of attn_window slots per layer for a
        sliding-window model with rotary positions (config.rolling), else block_size slots."""
        p = self.wte.weight
        cache = RollingKVCache if self.config.rolling else KVCache
        return cache.for_model(self.config, batch_size, device or p.device, dtype or p.dtype)

    def generate(self, idx, max_new_tokens: int, **kwargs):
        """Return idx (B, T) followed by max_new_tokens sampled tokens, shape (B * num_samples, T + new).
        Keyword arguments as in model.generate.decode."""
        return generate(self, idx, max_new_tokens, **kwargs)
