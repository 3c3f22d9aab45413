"""Speculative decoding: a cheap draft guesses the next k tokens, the model checks them all at once.

A decode step on a CPU costs about the same for 1 token as for 1 + k: the time goes to reading
the weights, not to arithmetic. So a draft that guesses k tokens for free (NGramDraft: what
followed the same few tokens in the training text) lets one forward over the cache score the
last token and the k guesses together; every guess the model agrees with is a token gained.

    cache: ... x        forward [x, g1, g2, g3]  ->  logits L0 L1 L2 L3
    L0 picks g1? yes, L1 picks g2? no: emit g1, then L1's own pick; g2 and g3 are dropped

Exact, not approximate:
  - greedy: a guess is kept only if it is the model's argmax, so the text is plain greedy's;
  - sampling: guess g is kept with probability p(g) (the draft is sure of it: q(g) = 1), and on
    rejection the token is drawn from p without g, renormalised. Together that is a draw from p
    exactly (Leviathan et al. 2023, Chen et al. 2023), so the text has the model's distribution.
  - the cache rolls back past the first rejected guess: a KVCache only reads positions < pos,
    so moving pos back is enough; a ring (RollingKVCache) overwrote slots still in the window,
    so those slots are saved before the forward and written back.
Past block_size the same cut as every other path (generate.visible_context): a guess never
reaches past the window, so every token is scored over the very context plain decoding uses.
"""

import numpy as np
import torch

from .generate import check_generate_args, draw, eval_mode, next_probs, prefill, visible_context


class NGramDraft:
    """Guesses from a token sequence (the training text): after the last n tokens, the token that
    most often followed them there, for the longest n <= order it has seen. Built with numpy
    (one sort per order), looked up by binary search; nothing to train or store."""

    def __init__(self, tokens, order: int = 4):
        tokens = np.asarray(tokens, dtype=np.int64)
        self.base = int(tokens.max()) + 1 if tokens.size else 1
        while order > 1 and self.base ** (order + 1) >= 2 ** 62:  # (n-gram, next): one int64
            order -= 1
        self.order = order
        self.tables = [self._table(tokens, n) for n in range(1, order + 1)]  # n-1 -> (keys, next)
        self.memo = {}  # last `order` tokens -> guess (decoding revisits the same contexts)

    @classmethod
    def from_file(cls, path, order: int = 4):
        """From a prepared train.bin (data/prepare.py: uint16 or uint32 ids, as meta.json says)."""
        from data.prepare import DTYPES, load_meta
        return cls(np.memmap(path, dtype=DTYPES[load_meta(path)["dtype"]], mode="r"), order)

    def _table(self, tokens, n):
        """(sorted n-gram keys (K,), the most frequent next token of each (K,)), from one sort
        of every (n-gram, next) pair written as one int64, key * base + next."""
        if tokens.size <= n:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = np.zeros(tokens.size - n, np.int64)
        for j in range(n):
            keys = keys * self.base + tokens[j:tokens.size - n + j]
        nxt = tokens[n:]
        pairs = np.sort(keys * self.base + nxt)
        start = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])         # each (key, next)
        k, x = pairs[start] // self.base, pairs[start] % self.base
        count = np.diff(np.r_[start, nxt.size])
        group = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])                # each key's first pair
        most = np.repeat(np.maximum.reduceat(count, group), np.diff(np.r_[group, k.size]))
        best = np.flatnonzero(count == most)                             # per key: its best pairs,
        best = best[np.r_[True, k[best][1:] != k[best][:-1]]]            # the first of them
        return k[best], x[best]

    def guess(self, context: list[int]) -> int | None:
        """The next token after context (a list of ids), or None if no suffix was ever seen."""
        tail = tuple(context[-self.order:])
        if tail in self.memo:
            return self.memo[tail]
        found = None
        for n in range(min(self.order, len(tail)), 0, -1):
            if max(tail[-n:]) >= self.base:
                continue  # a token the text never had
            key = 0
            for t in tail[-n:]:
                key = key * self.base + t
            keys, nxt = self.tables[n - 1]
            i = int(np.searchsorted(keys, key))
            if i < keys.size and keys[i] == key:
                found = int(nxt[i])
                break
        self.memo[tail] = found
        return found

    def propose(self, context: list[int], k: int) -> list[int]:
        """Up to k guesses, each following the ones before it."""
        context, out = list(context[-self.order:]), []
        for _ in range(k):
            t = self.guess(context)
            if t is None:
                break
            out.append(t)
            context.append(t)
        return out


def accept(logits, guess, temperature=1.0, top_k=None, top_p=None, generator=None):
    """The verdict on a guess per row: logits (N, V), guess (N,) -> (kept (N,) bool, token (N,)):
    the guess where kept, else the token to emit instead. Greedy (temperature 0): kept if it is
    the argmax, else the argmax. Sampling, p = next_probs(logits): kept with probability p(guess),
    else a draw from p with the guess taken out; the token is then a draw from p exactly."""
    if temperature == 0:
        best = logits.argmax(dim=-1)
        return best == guess, best
    p = next_probs(logits, temperature, top_k, top_p)                   # (N, V)
    g = guess[:, None]
    kept = torch.rand(g.shape, device=p.device, generator=generator) < p.gather(1, g)  # (N, 1)
    other = draw(p.scatter(1, g, 0.0), generator)                       # the residual p - q
    return kept[:, 0], torch.where(kept[:, 0], guess, other)


class TextLookup:
    """Guesses from the text being written: if its last n tokens occurred before, what followed
    them the last time (a model's text repeats itself; prompt-lookup decoding). Grows with the
    text, one dict entry per token."""

    def __init__(self, n: int = 4):
        self.n, self.text, self.after = n, [], {}   # after: n-gram -> index of what followed it

    def extend(self, tokens):
        for t in tokens:
            if len(self.text) >= self.n:
                self.after[tuple(self.text[-self.n:])] = len(self.text)
            self.text.append(t)

    def propose(self, k: int) -> list[int]:
        i = self.after.get(tuple(self.text[-self.n:]))
        return [] if i is None else self.text[i:i + k]


class SpeculativeDecoder:
    """Decode one sequence with guesses, k at most per forward: first what followed the text's
    last few tokens earlier in it (TextLookup), the rest from the draft (an NGramDraft, or None).
    Counts what it did: `proposed` guesses, `accepted` of them, `forwards` over the cache.

    static: a StaticDecoder of the model taking k+1 tokens a step (model/fast_decode.py; a CUDA
    graph on a GPU, checked by its verify() before use) checks the guesses in its fixed-shape
    step, fewer guesses padded; without it the model's forward over the KV cache does."""

    def __init__(self, model, draft, k: int, lookup_n: int = 4, static=None):
        if k < 1:
            raise ValueError(f"k={k!r}: must be an integer >= 1")
        if static is not None and static.tokens != k + 1:
            raise ValueError(f"the static decoder takes {static.tokens} tokens a step; k={k} needs {k + 1}")
        self.model, self.draft, self.k, self.lookup_n, self.static = model, draft, k, lookup_n, static
        self.proposed = self.accepted = self.forwards = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / max(self.proposed, 1)

    @torch.no_grad()
    def decode(self, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
               generator=None, seed=None, num_samples=1, keep=None):
        """Like model.generate.decode for one row (idx (1, T), num_samples 1): yield
        (logits (1, V), next token (1,)) per new token, the logits the model's raw output."""
        model, cfg = self.model, self.model.config
        generator = check_generate_args(idx, max_new_tokens, temperature, top_k, top_p,
                                        num_samples, keep, cfg.block_size, generator, seed)
        if idx.size(0) != 1 or num_samples != 1:
            raise ValueError("speculative decoding runs one sequence: idx (1, T), num_samples=1")
        if max_new_tokens == 0:
            return
        dev, static = idx.device, self.static

        def verdict(logits, guess):  # logits (V,), guess int -> (kept, token int)
            kept, tok = accept(logits[None], torch.tensor([guess], device=dev),
                               temperature, top_k, top_p, generator)
            return bool(kept), int(tok)

        def pick(logits):  # (V,) -> int, as sample_next picks
            if temperature == 0:
                return int(logits.argmax())
            return int(draw(next_probs(logits[None], temperature, top_k, top_p), generator))

        def forward(tokens):  # list of ids at the cache's next positions -> logits (T, V)
            self.forwards += 1  # GPT.forward picks the attention kernels (model/kernels.py)
            if static is None:
                return model(torch.tensor([tokens], device=dev), cache=cache)[0][0]
            padded = tokens + tokens[-1:] * (static.tokens - len(tokens))   # its outputs unread
            return static.check(torch.tensor([padded], device=dev))[0, :len(tokens)].clone()

        def restart(context):  # prefill afresh -> the last position's logits (V,)
            if static is None:
                cache.reset()
                return forward(context)[-1]
            self.forwards += 1
            return static.prefill(torch.tensor([context], device=dev))[0]

        with eval_mode(model):
            context = idx[0, -visible_context(idx.size(1), cfg, cfg.block_size):].tolist()
            text = TextLookup(self.lookup_n)
            text.extend(idx[0].tolist())
            cache = model.new_cache(1, device=dev) if static is None else None
            ids = torch.tensor([context], device=dev)
            logits = (prefill(model, ids, cache) if static is None else static.prefill(ids))[0]   # (V,)
            nxt, done = pick(logits), 0
            while True:
                yield logits[None], torch.tensor([nxt], device=dev)
                done += 1
                if done == max_new_tokens:
                    return
                context.append(nxt)
                text.extend([nxt])
                seen = visible_context(len(context), cfg, keep)
                if seen < len(context):                                 # cut: prefill afresh
                    context = context[-seen:]
                    logits = restart(context)
                    nxt = pick(logits)
                    continue
                # guesses end inside the window (a ring: fewer than its W slots, all distinct)
                room = cfg.attn_window - 1 if cfg.rolling else cfg.block_size - len(context)
                guess = self._guess(text, min(self.k, room, max_new_tokens - done - 1))
                start = cache.pos if static is None else static.filled
                saved = self._save_ring(cache, start, len(guess) + 1) if cfg.rolling else None
                out = forward([nxt] + guess)                            # (1 + len(guess), V)
                self.proposed += len(guess)
                n = 0
                for g in guess:
                    kept, tok = verdict(out[n], g)
                    if not kept:
                        break
                    yield out[n:n + 1], torch.tensor([g], device=dev)
                    context.append(g)
                    text.extend([g])
                    n += 1
                else:
                    tok = pick(out[n])                                  # every guess kept: a bonus
                self.accepted += n
                done += n
                if static is None:
                    self._roll_back(cache, start + 1 + n, saved)
                else:
                    static.rewind(start + 1 + n)
                logits, nxt = out[n], tok

    def _guess(self, text, k):
        guess = text.propose(k)
        if len(guess) < k and self.draft is not None:
            guess += self.draft.propose(text.text[-self.draft.order:] + guess, k - len(guess))
        return guess

    @staticmethod
    def _save_ring(cache, start, T):
        """The ring slots that positions start .. start+T-1 will overwrite, and what they hold."""
        slots = torch.arange(start, start + T, device=cache.k.device) % cache.window
        return slots, cache.k[:, :, :, slots].clone(), cache.v[:, :, :, slots].clone()

    @staticmethod
    def _roll_back(cache, pos, saved):
        """Keep positions < pos. Past them a KVCache holds nothing it will read; a ring gets the
        keys and values of its overwritten slots back."""
        if saved is not None:
            slots, k, v = saved
            drop = slice(pos - (cache.pos - slots.numel()), None)      # the rejected positions
            cache.k[:, :, :, slots[drop]] = k[:, :, :, drop]
            cache.v[:, :, :, slots[drop]] = v[:, :, :, drop]
        cache.pos = pos
