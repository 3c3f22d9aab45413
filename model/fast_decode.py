"""Fast decoding: a static KV cache and one fixed-shape decode step, replayed as a CUDA graph.

Why: decoding a small model on a GPU is bound by kernel launches, not by arithmetic. One token
is many tiny kernels, and launching each from Python costs more than running it; a CUDA graph
records one decode step's kernels once and replays them all with a single launch.

A graph replays the same kernels on the same memory, so the step has fixed shapes and addresses:
  - the cache is allocated once, (n_layer, N, n_kv_head, max_len, head_size), written in place;
  - the position is a (1,) tensor on the device, not a Python int: wpe, RoPE's angles and the
    cache write read it, and the step adds 1 to it itself;
  - attention runs over all max_len slots with a mask built from that tensor (not in the future,
    and with attn_window not out of the band), so slots not written yet get weight 0; without a
    graph, over the filled slots only (fewer bytes a token), a size compiled once as dynamic;
  - the input token and the output logits are static buffers: clone the logits to keep them.
The host counts the filled positions itself and never reads `pos` back: no sync per token. The
step reuses the model's norms, MLP and head, and writes out only the attention core. A rolling
model (config.rolling) gets a ring of attn_window slots, as RollingKVCache (model/kv_cache.py).
Prefill runs the model's ordinary forward into a cache whose buffers are the static ones.

Off CUDA (or with cuda_graph=False) the same step runs eagerly, which is how the CPU tests check
it token for token against the plain cached path. verify() checks the graph or compiled step
against the eager one before use; sample.py falls back to the plain KV cache if it fails.
Compiled on a CPU, the step runs the model's twin whose linear layers compute one row as a
multiply and a sum (model/matvec.py), the form Inductor streams weights fastest in.
"""

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from .attention import position_mask, rms_norm, rotate
from .kernels import SDPA_BACKENDS
from .generate import (check_generate_args, eval_mode, prefill, sample_next,
                       visible_context)
from .kv_cache import KVCache, RollingKVCache
from .matvec import MatVec, as_matvec
from .quantize import Int8Linear, fuse_int8

# verify(): how far the replayed step's logits may be from the eager step's, as a fraction of the
# largest |logit| (or of 1, if all are smaller). A graph of the plain step replays the eager
# step's very kernels: equal logits, bit for bit, so it gets next to no slack. torch.compile fuses
# ops and keeps fp32 intermediates, which moves logits by a few units in the dtype's last place.
# A broken replay (an empty graph, the wrong position, mask or buffers) is off by the logits'
# whole scale, or nan.
VERIFY_TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
VERIFY_TOLERANCE_COMPILED = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class DecodeCheckError(RuntimeError):
    """The fast decode step, as decode() runs it, does not reproduce the plain eager step."""


class StaticDecoder:
    """Decode N sequences at once with a preallocated cache. Build it once (capturing the
    graph takes a few warm-up steps), then call decode() as often as you like.

    The q, k, v weights are fused into one matrix per layer (one matmul instead of three), a
    copy taken here: rebuild the decoder if the model's weights change afterwards.
    """

    def __init__(self, model, batch_size: int, *, cuda_graph: bool | None = None, compile: bool = False,
                 tokens: int = 1):
        """tokens: how many tokens a row a step takes, at consecutive positions. 1 decodes; more
        checks speculative guesses in one step (check(), model/speculative.py)."""
        cfg = model.config
        if tokens > 1 and cfg.rolling:
            raise ValueError("a step of several tokens needs a plain cache: in a ring, a later "
                             "token's write would overwrite keys an earlier one still sees")
        p = model.wte.weight
        self.device, self.dtype = p.device, p.dtype
        if compile and self.device.type == "cpu":
            model = as_matvec(model)                                        # shares the weights
        self.model, self.config, self.batch_size, self.tokens = model, cfg, batch_size, tokens
        self.ring = cfg.rolling  # a ring of attn_window slots that never fills, else block_size slots
        self.max_len = cfg.attn_window if self.ring else cfg.block_size   # slots per layer
        # the static buffers: cache, position, input token, output logits
        if self.ring:
            self.cache = model.new_cache(batch_size, self.device, self.dtype)
        else:  # spare slots: for a check step's padding past the window, and so a step's slots
            # are never the whole cache, a size the compiled step would specialise on (compiling twice)
            self.cache = KVCache.for_model(cfg, batch_size, self.device, self.dtype,
                                           max_len=self.max_len + tokens)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)          # first position
        self.offsets = torch.arange(tokens, device=self.device)                   # (T,)
        self.tok = torch.zeros(batch_size, tokens, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(batch_size, tokens, cfg.vocab_size, device=self.device, dtype=self.dtype)
        n_keys = self.max_len if self.ring else self.max_len + tokens - 1        # slots a step may see
        self.key_idx = torch.arange(n_keys, device=self.device)                   # (n_keys,)
        self.layer_idx = torch.arange(cfg.n_layer, device=self.device).view(-1, 1)  # (n_layer, 1)
        self.neg_inf = torch.full((n_keys,), float("-inf"), device=self.device, dtype=self.dtype)
        self.filled = 0  # host-side count of positions holding real data (== pos, never read back)
        with torch.no_grad():
            self.qkv = [self._fuse(b.attn) for b in model.blocks]
        # On a CPU, Inductor would otherwise recompute a norm's output inside every row of the
        # matvec that reads it, instead of once (options: its documented config keys).
        options = {"realize_opcount_threshold": 0} if self.device.type == "cpu" else None
        # the compiled step is the plain function compiled, called with self: storing the bound
        # method self._step here would be a reference cycle (self -> method -> self), keeping the
        # cache and the graph's memory pool alive after `del` until the cyclic GC happens to run
        self._compiled = (torch.compile(StaticDecoder._step, fullgraph=True, dynamic=None, options=options)
                          if compile else None)
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        self.graph = None
        if cuda_graph:
            with eval_mode(model):  # a graph captured with dropout on would replay it forever
                self._capture()

    @staticmethod
    def _fuse(attn):
        """One (q|k|v) linear layer per layer, (nh*hs + 2*nkv*hs, C): an nn.Linear of the
        three, or one Int8Linear (model/quantize.py), in a MatVec if the twin has them so."""
        layers = [attn.q_proj, attn.k_proj, attn.v_proj]
        wrap = isinstance(layers[0], MatVec)                               # model/matvec.py
        layers = [m.layer for m in layers] if wrap else layers
        if isinstance(layers[0], Int8Linear):
            fused = fuse_int8(layers)
        else:
            w = torch.cat([m.weight for m in layers]).detach()
            # built on the meta device (nothing allocated), then given the fused weights
            fused = nn.Linear(w.size(1), w.size(0), bias=layers[0].bias is not None, device="meta")
            fused.weight = nn.Parameter(w, requires_grad=False)
            if layers[0].bias is not None:
                fused.bias = nn.Parameter(torch.cat([m.bias for m in layers]).detach(), requires_grad=False)
        return MatVec(fused) if wrap else fused

    @torch.no_grad()
    def _step(self, slots):
        """T tokens per row (T = 1 to decode), self.tok (N, T) at positions pos .. pos+T-1 ->
        self.logits (N, T, V), attending over the cache slots key_idx[:n] (_slots()). For a
        CUDA graph every shape here is fixed, n included."""
        m = self.model
        positions = self.pos + self.offsets                                # (T,)
        x = m.wte(self.tok)                                                # (N, T, C)
        if m.wpe is not None:
            # a check step's padding may run past the table; what it computes is never read
            x = x + m.wpe(positions.clamp(max=self.config.block_size - 1))  # (T, C) broadcast
        x = m.ln_e(x)                                                      # Identity unless embed_norm
        # RoPE's angles at the positions, computed from the tensor (any position, past block_size
        # too): (cos, sin), each (T, hs/2), once for every layer
        rope = m.rotary.cos_sin(positions) if m.rotary is not None else None
        # where these tokens' k and v go: slot pos, or in a ring slot pos % W (it wraps around)
        slot = positions % self.max_len if self.ring else positions
        with sdpa_kernel(SDPA_BACKENDS["decode"]):  # model/kernels.py says which and why
            x = self._blocks(x, rope, slot, self._visible(slots, positions))
        self.logits.copy_(m.head(m.ln_f(x)))                               # (N, T, V), static buffer
        self.pos.add_(self.tokens)

    def _visible(self, slots, positions):
        """The additive mask over the n slots attended, slots (n,), for the queries at positions
        (T,), (1, 1, T, n): 0 where it may look, -inf elsewhere. Built from the position tensor
        once per step, in the compute dtype, so no layer has to convert it."""
        if self.ring:
            # slot s holds the latest position p <= pos with p % W == s (this step writes pos
            # first); negative: not written yet
            slot_pos = self.pos - (self.pos - slots) % self.max_len
        else:
            slot_pos = slots                                               # slot s holds position s
        written = slot_pos >= 0                                            # (n,)
        # not in the future (keys after pos: not written yet, or left from an earlier sequence)
        # and, with attn_window, not out of the window
        ok = position_mask(positions, slot_pos, self.config.attn_window) & written   # (T, n)
        return torch.where(ok, 0.0, self.neg_inf[:slots.size(0)]).view(1, 1, *ok.shape)

    def _blocks(self, x, rope, slot, visible):
        """The transformer blocks for T tokens per row: x (N, T, C) -> (N, T, C)."""
        m, cfg = self.model, self.config
        (N, T, C), n = x.shape, visible.size(-1)
        nh, nkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_size
        x0 = x
        for i, block in enumerate(m.blocks):
            x = block.shortcut(x, x0)
            h = block.ln_1(x)
            q, k, v = self.qkv[i](h).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
            q = q.view(N, T, nh, hs).transpose(1, 2)                       # (N, nh, T, hs)
            k = k.view(N, T, nkv, hs).transpose(1, 2)                      # (N, nkv, T, hs)
            v = v.view(N, T, nkv, hs).transpose(1, 2)
            if block.attn.qk_norm:
                q, k = rms_norm(q), rms_norm(k)
            if rope is not None:
                q, k = rotate(q, *rope), rotate(k, *rope)
            # write at slot, in place, indexing the whole cache and not a view of layer i:
            # compiled, a write through a view of an input copies the whole input
            self.cache.k[self.layer_idx[i], :, :, slot] = k.permute(2, 0, 1, 3)   # (T, N, nkv, hs)
            self.cache.v[self.layer_idx[i], :, :, slot] = v.permute(2, 0, 1, 3)
            keys, values = self.cache.k[i, :, :, :n], self.cache.v[i, :, :, :n]  # (N, nkv, n, hs)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible,
                                               enable_gqa=nkv != nh)       # (N, nh, T, hs)
            x = x + block.attn.o_proj(y.transpose(1, 2).reshape(N, T, C))
            x = x + block.mlp(block.ln_2(x))
        return x

    def _slots(self):
        """The slots a step attends over, key_idx[:n]: all of them in a CUDA graph (fixed
        shapes) and in a ring (each holds a position of the window), else the filled ones and
        this step's own, at least 2 (a size of 1 is specialised on, and would compile again)."""
        if self.graph is not None or self.ring:
            return self.key_idx
        return self.key_idx[:max(self.filled + self.tokens, 2)]

    def _run(self, slots, dynamic=False):
        """The step as decode() records or runs it: compiled if asked for, else eager. dynamic:
        the number of slots varies from step to step (one compiled graph for every length)."""
        if self._compiled is not None:
            if dynamic:
                torch._dynamo.maybe_mark_dynamic(slots, 0)
            self._compiled(self, slots)
        else:
            self._step(slots)

    def _replay(self):
        """One step the way decode() takes it: replay the CUDA graph if there is one."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run(self._slots(), dynamic=not self.ring)

    def _warm_up(self, steps: int = 3):
        """Run the step a few times before capture (cuBLAS workspaces, compile autotuning, the
        allocator), each from position 0: it writes cache slot 0 only, so any block_size >= 1
        is safe (a write past the cache is a device-side assert that kills the CUDA
        context). Prefill later overwrites slot 0 or the mask hides it."""
        for _ in range(steps):
            self.pos.zero_()
            self._run(self.key_idx)
        self.pos.zero_()

    def _capture(self):
        dev = self.device
        # Everything on the model's own GPU. torch.cuda.graph(g) without stream= captures on a
        # stream of the *current* device (cuda:0) while the step's kernels go to dev, and the
        # graph records nothing: each replay would then do nothing (PyTorch only warns). So dev
        # is made current, and one stream created on dev serves the warm-up and the capture.
        with torch.cuda.device(dev):
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            # warm up on the side stream first, as capture requires; capture then only records
            with torch.cuda.stream(stream):
                self._warm_up()
            torch.cuda.current_stream(dev).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self._run(self.key_idx)
            self.pos.zero_()

    @torch.no_grad()
    def verify(self):
        """Check the step as decode() takes it (the CUDA graph's replay, or the compiled step)
        against the plain eager step, from known states at several positions: the same logits
        (VERIFY_TOLERANCE, or VERIFY_TOLERANCE_COMPILED for a compiled step) and the position
        moved on by exactly one. Raises DecodeCheckError otherwise, or if the replay raises.
        Costs two steps a position and one read back to the host each; leaves the decoder empty
        (decode() prefills first anyway).

        Each known state: cache filled with seeded noise, a fixed token per row, and nan in the
        logits buffer, so a replay that writes nothing (an empty graph) cannot pass. The
        positions: the first slot, the middle of the window (keys before it must count, keys
        after it must be masked; with attn_window, keys too far back too) and the last slot. A
        ring: mid-ring before it wraps (the slots after pos are not written yet and must be
        masked), and mid-ring past block_size (RoPE's angles beyond the trained positions, a
        wrapped slot)."""
        if self.graph is not None:
            what = "the CUDA graph" + (" of the compiled step" if self._compiled else "")
        else:
            what = "the compiled step" if self._compiled else "the step"
        W = self.max_len
        positions = [W // 2, self.config.block_size + W // 2] if self.ring else sorted({0, W // 2, W - 1})
        # torch's CPU int8 kernel computes in bf16 whatever the model's dtype (model/quantize.py)
        int8_cpu = self.device.type == "cpu" and any(isinstance(m, Int8Linear) for m in self.model.modules())
        dtype = torch.bfloat16 if int8_cpu else self.dtype
        tol = (VERIFY_TOLERANCE_COMPILED if self._compiled else VERIFY_TOLERANCE).get(dtype, 1e-4)
        tok = (torch.arange(self.batch_size * self.tokens, device=self.device) % self.config.vocab_size)
        tok = tok.view(self.batch_size, self.tokens)

        def known_state(pos):
            g = torch.Generator(device=self.device).manual_seed(pos)
            self.cache.k.normal_(generator=g)
            self.cache.v.normal_(generator=g)
            self.tok.copy_(tok)
            self.pos.fill_(pos)
            self.filled = pos
            self.logits.fill_(float("nan"))

        problems = []
        try:
            with eval_mode(self.model):  # the model as decode() runs it
                for pos in positions:
                    known_state(pos)
                    self._step(self._slots())                              # the reference: eager
                    want = self.logits.clone().float()                     # (N, T, V)
                    known_state(pos)
                    try:
                        self._replay()
                        got, moved = self.logits.clone().float(), int(self.pos) - pos  # int() waits
                    except Exception as e:
                        first = (str(e).strip().splitlines() or [""])[0][:200]
                        raise DecodeCheckError(f"{what} raised {type(e).__name__}: {first}") from e
                    scale = want.abs().max().clamp_min(1.0)
                    err = (got - want).abs().max()                         # nan if any logit is nan
                    if not err <= tol * scale:                             # also catches nan
                        problems.append(f"gives logits off by {err.item():.3g} from the eager step's at "
                                        f"position {pos} (largest {scale.item():.3g}, tolerance {tol:g} of it)")
                    if moved != self.tokens:
                        problems.append(f"moves the position by {moved}, not by {self.tokens}")
                    if problems:
                        break
        finally:
            self.cache.reset()
            self.pos.zero_()
            self.filled = 0
        if problems:
            raise DecodeCheckError(f"{what} " + " and ".join(problems))

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
            logits = prefill(self.model, idx, self.cache)                  # a ring: any T
        else:
            # all samples continue the same prompt: prefill it once, copy its keys and values
            # (a ring's W slots, or the T filled positions)
            if self.ring:
                once = RollingKVCache.for_model(self.config, B, self.device, self.dtype)
            else:
                once = KVCache.for_model(self.config, B, self.device, self.dtype, max_len=T)
            logits = prefill(self.model, idx, once)
            n = once.k.size(3)
            self.cache.k[:, :, :, :n] = once.k.repeat_interleave(num_samples, dim=1)
            self.cache.v[:, :, :, :n] = once.v.repeat_interleave(num_samples, dim=1)
            logits = logits.repeat_interleave(num_samples, dim=0)          # (N, V)
        self.pos.fill_(T)
        self.filled = T
        return logits

    def step(self, tok):
        """tok (N,) at the next position -> logits (N, V). The result is the static buffer:
        the next step overwrites it."""
        if self.tokens != 1:
            raise ValueError(f"this decoder takes {self.tokens} tokens a step: use check()")
        if self.filled >= self.max_len and not self.ring:  # a ring never fills
            raise ValueError(f"static cache is full ({self.max_len} positions); prefill again")
        self.tok.copy_(tok.view(-1, 1))
        self._replay()
        self.filled += 1
        return self.logits[:, -1]

    def check(self, tokens):
        """tokens (N, T) at the next T positions -> logits (N, T, V), the static buffer. Their
        keys and values stay in the cache; rewind() keeps fewer of them (model/speculative.py)."""
        if not 0 < self.filled < self.max_len:
            raise ValueError(f"check() needs a prefill and room in the window: {self.filled} of "
                             f"{self.max_len} positions filled")
        self.tok.copy_(tokens)
        self._replay()
        self.filled += self.tokens
        return self.logits

    def rewind(self, filled: int):
        """Keep positions < filled only. Nothing is erased: the next step overwrites the rest,
        and until then the mask hides them from every query before them."""
        self.filled = filled
        self.pos.fill_(filled)                                          # a write, not a read: no sync

    def decode(self, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
               generator=None, seed=None, num_samples=1, keep=None):
        """Like model.generate.decode(use_cache=True): yield (logits (N, V), next token (N,))
        per new token, past block_size as model.generate.visible_context says."""
        cfg = self.config
        generator = check_generate_args(idx, max_new_tokens, temperature, top_k, top_p,
                                        num_samples, keep, cfg.block_size, generator, seed)
        with eval_mode(self.model), torch.no_grad():
            tokens = idx[:, -visible_context(idx.size(1), cfg, cfg.block_size):]  # what it sees
            logits = self.prefill(tokens, num_samples)
            tokens = tokens.repeat_interleave(num_samples, dim=0)       # (N, T)
            since = []  # tokens picked since the last prefill, each (N,); joined only when needed
            for step in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                yield logits.clone(), nxt   # clone: the next replay overwrites the buffer
                if step == max_new_tokens - 1:
                    break
                T = self.filled + 1                                     # the context, nxt included
                seen = visible_context(T, cfg, keep)
                if seen < T:                                            # cut: prefill afresh
                    tokens = torch.cat([tokens, *[t[:, None] for t in since], nxt[:, None]], dim=1)
                    tokens, since = tokens[:, -seen:], []
                    logits = self.prefill(tokens)
                else:
                    if not self.ring:  # a ring is never cut: its tokens are never needed again
                        since.append(nxt)
                    logits = self.step(nxt)


def decode_static(model, idx, max_new_tokens, *, num_samples=1, cuda_graph=None, compile=False, **kwargs):
    """Build a StaticDecoder for idx's rows x num_samples and decode with it (one-off use)."""
    dec = StaticDecoder(model, idx.size(0) * num_samples, cuda_graph=cuda_graph, compile=compile)
    yield from dec.decode(idx, max_new_tokens, num_samples=num_samples, **kwargs)


@torch.no_grad()
def fastest_dtype(model, dtypes=(torch.float32, torch.bfloat16), steps: int = 8, margin: float = 1.25):
    """Of dtypes, the one this model decodes fastest in on this machine: each times `steps`
    one-token steps over the plain KV cache in this process's CPU seconds (another process's load
    does not count), twice in turn (the faster counts), on a copy of the model cast to it. A later dtype must beat the first by `margin` (x faster) to be
    picked, so a model whose dtypes run about as fast always gets the first, whatever the noise
    of one measurement. Returns (dtype, {dtype: seconds per step})."""
    times = {}
    idx = torch.zeros(1, 1, dtype=torch.long, device=model.wte.weight.device)
    models = {d: model if model.wte.weight.dtype == d else copy.deepcopy(model).to(d) for d in dtypes}
    n = min(steps, model.config.block_size - 1)
    for _ in range(2):
        for dtype, m in models.items():
            cache = m.new_cache(1)
            with eval_mode(m):
                m(idx, cache=cache)
                t0 = time.process_time()  # CPU time: other processes' load does not count
                for _ in range(n):
                    m(idx, cache=cache, last_only=True)
                t = (time.process_time() - t0) / max(n, 1)
            times[dtype] = min(times.get(dtype, t), t)
    first = dtypes[0]
    best = min(times, key=times.get)
    return (best if times[best] * margin <= times[first] else first), times
