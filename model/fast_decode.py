"""Fast decoding: a static KV cache and one fixed-shape decode step, replayed as a CUDA graph.

Why: decoding a small model on a GPU is bound by kernel *launches*, not by arithmetic. One
token through 6 layers is ~100 tiny kernels, and launching each from Python costs more than
running it, so the plain KV cache (model/generate.py) gains little there. A CUDA graph records
the kernels of one decode step once and replays them all with a single launch.

A graph replays the exact same kernels on the exact same memory, so the step must have fixed
shapes and fixed addresses:
  - the cache is allocated once, (n_layer, N, n_kv_head, max_len, head_size), and written in place;
  - the position is a (1,) tensor on the device, not a Python int: rope/wpe are indexed by it,
    k and v are written at it with index_copy_, and the step adds 1 to it itself;
  - attention always runs over all max_len cached keys, with a mask (key index <= pos) built
    from that tensor, so keys not written yet (or left over from an earlier window) get weight 0;
    the step reuses the model's own norms, MLP, output projection and head, and writes out only
    the attention core (fused q|k|v matmul, qk-norm, rope, cache write, masked SDPA);
  - the input token and the output logits live in static buffers; the caller copies the token
    in before a replay and must clone the logits if it keeps them past the next replay.
The host knows how many positions are filled (it counts the steps), so it never reads `pos`
back: no synchronisation per token. Sampling runs outside the graph, on the logits buffer.

On CPU (or with cuda_graph=False) the same step runs eagerly: same tokens, no graph. That is
how the CPU tests check this file against the plain cached path, token for token.

Prefill (the prompt, and the re-prefill past block_size) goes through the model's ordinary
forward with a KVCache whose buffers *are* the static ones, so it writes in place too.
"""

import torch
import torch.nn.functional as F

from .generate import check_generate_args, sample_next
from .kv_cache import KVCache

# The GPTConfig fields _step is written for. tests/test_fast_decode.py fails when the model gains
# an option that is not here, so the fixed-shape step learns it rather than silently ignoring it.
KNOWN_CONFIG = ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "dropout",
                "bias", "pos_emb", "rope_base", "attn_impl", "norm", "embed_norm", "qk_norm",
                "mlp_act", "zero_init", "tie_embeddings", "logit_softcap")


class StaticDecoder:
    """Decode N sequences at once with a preallocated cache. Build it once (capturing the
    graph takes a few warm-up steps), then call decode() as often as you like.

    The q, k, v weights are fused into one matrix per layer (one matmul instead of three), a
    copy taken here: rebuild the decoder if the model's weights change afterwards.
    """

    def __init__(self, model, batch_size: int, *, cuda_graph: bool | None = None, compile: bool = False):
        cfg = model.config
        p = model.wte.weight
        self.model, self.config, self.batch_size = model, cfg, batch_size
        self.device, self.dtype = p.device, p.dtype
        self.max_len = cfg.block_size
        # the static buffers: cache, position, input token, output logits
        self.cache = KVCache.for_model(cfg, batch_size, self.device, self.dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)          # next position
        self.tok = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(batch_size, cfg.vocab_size, device=self.device, dtype=self.dtype)
        self.key_idx = torch.arange(self.max_len, device=self.device)             # (max_len,)
        self.neg_inf = torch.full((self.max_len,), float("-inf"), device=self.device, dtype=self.dtype)
        self.filled = 0  # host-side count of positions holding real data (== pos, never read back)
        with torch.no_grad():
            self.qkv = [self._fuse(b.attn) for b in model.blocks]
        self._run = torch.compile(self._step, fullgraph=True, dynamic=False) if compile else self._step
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        self.graph = None
        if cuda_graph:
            # record in eval mode: a graph captured with dropout on would replay it forever
            was_training = model.training
            model.eval()
            try:
                self._capture()
            finally:
                model.train(was_training)

    @staticmethod
    def _fuse(attn):
        """One (q|k|v) weight (and bias) per layer: (nh*hs + 2*nkv*hs, C)."""
        w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
        b = None
        if attn.q_proj.bias is not None:
            b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach()
        return w, b

    @staticmethod
    def _rope(rotary, x, pos):
        """Rotary.forward for one token at a position held in a tensor. x: (N, h, 1, hs)."""
        cos = rotary.cos.index_select(0, pos).to(x.dtype)                 # (1, hs/2)
        sin = rotary.sin.index_select(0, pos).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    @torch.no_grad()
    def _step(self):
        """One token per row, self.tok (N, 1) at position self.pos -> self.logits (N, V).
        Every shape here is fixed: this is what the CUDA graph records."""
        m, cfg = self.model, self.config
        N, C = self.tok.size(0), cfg.n_embd
        nh, nkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_size
        x = m.wte(self.tok)                                                # (N, 1, C)
        if m.wpe is not None:
            x = x + m.wpe(self.pos)                                        # (1, C) broadcast
        x = m.ln_e(x)                                                      # Identity unless embed_norm
        # additive mask over all max_len slots: 0 for keys written so far (index <= pos), -inf
        # for the rest; built once per step, in the compute dtype, so no layer has to convert it
        visible = self.neg_inf.masked_fill(self.key_idx <= self.pos, 0.0).view(1, 1, 1, self.max_len)
        for i, block in enumerate(m.blocks):
            h = block.ln_1(x)
            q, k, v = F.linear(h, *self.qkv[i]).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
            q = q.view(N, 1, nh, hs).transpose(1, 2)                       # (N, nh, 1, hs)
            k = k.view(N, 1, nkv, hs).transpose(1, 2)                      # (N, nkv, 1, hs)
            v = v.view(N, 1, nkv, hs).transpose(1, 2)
            if block.attn.qk_norm:
                q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
            if m.rotary is not None:
                q, k = self._rope(m.rotary, q, self.pos), self._rope(m.rotary, k, self.pos)
            keys, values = self.cache.k[i], self.cache.v[i]                # (N, nkv, max_len, hs)
            keys.index_copy_(2, self.pos, k)                               # write at pos, in place
            values.index_copy_(2, self.pos, v)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible,
                                               enable_gqa=nkv != nh)       # (N, nh, 1, hs)
            x = x + block.attn.o_proj(y.transpose(1, 2).reshape(N, 1, C))
            x = x + block.mlp(block.ln_2(x))
        self.logits.copy_(m.head(m.ln_f(x))[:, -1])                        # (N, V), static buffer
        self.pos.add_(1)

    def _capture(self):
        # warm up on a side stream first (cuBLAS workspaces, compile autotuning, allocator),
        # as graph capture requires; capture then only records, it does not run the kernels
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()
        # the warm-up moved pos and wrote junk at positions 0..2; prefill overwrites or masks it
        self.pos.zero_()

    @torch.no_grad()
    def prefill(self, idx, num_samples: int = 1):
        """Run the prompt idx (B, T) through the ordinary forward, writing the static cache
        in place; returns the last position's logits repeated per sample, (N, V)."""
        B, T = idx.shape
        if B * num_samples != self.batch_size:
            raise ValueError(f"this decoder was built for {self.batch_size} rows; got {B} prompts "
                             f"x {num_samples} samples")
        self.cache.reset()
        if num_samples == 1:
            logits = self.model(idx, cache=self.cache, last_only=True)[0][:, -1]
        else:
            # all samples continue the same prompt: prefill it once, copy its keys and values
            once = KVCache.for_model(self.config, B, self.device, self.dtype, max_len=T)
            logits = self.model(idx, cache=once, last_only=True)[0][:, -1]
            self.cache.k[:, :, :, :T] = once.k.repeat_interleave(num_samples, dim=1)
            self.cache.v[:, :, :, :T] = once.v.repeat_interleave(num_samples, dim=1)
            logits = logits.repeat_interleave(num_samples, dim=0)          # (N, V)
        self.pos.fill_(T)
        self.filled = T
        return logits

    def step(self, tok):
        """tok (N,) at the next position -> logits (N, V). The result is the static buffer:
        the next step overwrites it."""
        if self.filled >= self.max_len:
            raise ValueError(f"static cache is full ({self.max_len} positions); prefill again")
        self.tok.copy_(tok.view(-1, 1))
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()
        self.filled += 1
        return self.logits

    def decode(self, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
               generator=None, seed=None, num_samples=1, keep=None):
        """Like model.generate.decode(use_cache=True): yield (logits (N, V), next token (N,))
        per new token, with the same past-block_size policy (cut to the last `keep` tokens and
        prefill them again)."""
        bs = self.max_len
        keep, generator = check_generate_args(idx, max_new_tokens, temperature, top_k, top_p,
                                              num_samples, keep, bs, generator, seed)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                tokens = idx[:, -bs:]                                       # the visible window
                logits = self.prefill(tokens, num_samples)
                tokens = tokens.repeat_interleave(num_samples, dim=0)       # (N, T)
                since = []  # tokens picked since the last prefill, each (N,); joined only when needed
                for step in range(max_new_tokens):
                    nxt = sample_next(logits, temperature, top_k, top_p, generator)
                    yield logits.clone(), nxt   # clone: the next replay overwrites the buffer
                    if step == max_new_tokens - 1:
                        break
                    since.append(nxt)
                    if self.filled == self.max_len:
                        # the window is full: keep its last `keep` tokens and prefill them afresh
                        tokens = torch.cat([tokens, torch.stack(since, dim=1)], dim=1)[:, -keep:]
                        since = []
                        logits = self.prefill(tokens)
                    else:
                        logits = self.step(nxt)
        finally:
            self.model.train(was_training)


def decode_static(model, idx, max_new_tokens, *, num_samples=1, cuda_graph=None, compile=False, **kwargs):
    """Build a StaticDecoder for idx's rows x num_samples and decode with it (one-off use)."""
    dec = StaticDecoder(model, idx.size(0) * num_samples, cuda_graph=cuda_graph, compile=compile)
    yield from dec.decode(idx, max_new_tokens, num_samples=num_samples, **kwargs)
