"""Autoregressive generation: pick a token, append it, repeat.

Two ways to get the next token's logits, which must give the same numbers:
  - uncached (nanoGPT's way): run the whole context through the model every step;
  - cached: run the prompt once (prefill), then only the one new token per step,
    reading every earlier key and value from the KV cache.
Past block_size, every path follows one policy: visible_context() below says it.

A sliding-window model with rotary positions (config.rolling) is never cut: the cached path
puts the whole prompt into a RollingKVCache (model/kv_cache.py), then runs one token per step
for ever, with the same memory and work for every token; the uncached reference runs the whole
sequence every step with the band mask, slower each step but with no ring to be wrong about.
"""

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F

def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (N, V) -> next token ids (N,). temperature 0 means greedy (argmax).

    Nothing here reads a value back to the host: no .item(), no boolean indexing, no shape that
    depends on the data. On a GPU the picked tokens stay on the device and the next decode step
    is queued at once, without waiting for this one (tests/test_gpu_invariants.py checks this)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(next_probs(logits, temperature, top_k, top_p), generator)


def next_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """logits (N, V) -> the distribution sample_next draws from, (N, V); filtered tokens get 0."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]          # (N, 1) k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # nucleus: keep the smallest set of most likely tokens whose total probability >= top_p
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs             # probability mass ranked above each token
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # keeps the top one
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return F.softmax(logits, dim=-1)


def draw(probs, generator=None):
    """One token per row of probs (N, V), weights >= 0 of any sum -> (N,), by the exponential
    race: q_i ~ Exp(1), so q_i / p_i ~ Exp(rate p_i), and argmin(q / p) is token i with probability
    p_i / sum(p), as torch.multinomial's draw (which checks probs with .item(): on a GPU, a wait
    per token). q is kept above 0: 0 / 0 = nan (a filtered token) would win the argmax."""
    q = torch.empty_like(probs).exponential_(generator=generator).clamp_min_(torch.finfo(probs.dtype).tiny)
    return (probs / q).argmax(dim=-1)


def check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples):
    """The settings every way of sampling takes (generate, decode, StaticDecoder.decode and
    sample.py), checked in one place. A nonsense one is a ValueError "name=value: must be ...",
    which a command line turns into its own message by putting "--" in front."""
    def whole(x):
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    def real(x):
        return isinstance(x, numbers.Real) and not isinstance(x, bool)

    for name, value, ok, must in [
        ("max_new_tokens", max_new_tokens, whole(max_new_tokens) and max_new_tokens >= 0, "an integer >= 0"),
        ("temperature", temperature, real(temperature) and 0 <= temperature < math.inf,  # not nan or inf
         "a finite number >= 0 (0 = greedy)"),
        ("top_k", top_k, top_k is None or whole(top_k) and top_k >= 1,
         "an integer >= 1, or None to sample from every token"),
        ("top_p", top_p, top_p is None or real(top_p) and 0 < top_p <= 1,
         "a number in (0, 1], e.g. 0.9, or None to turn it off"),
        ("num_samples", num_samples, whole(num_samples) and num_samples >= 1, "an integer >= 1"),
    ]:
        if not ok:
            raise ValueError(f"{name}={value!r}: must be {must}")


def visible_context(T: int, config, keep: int | None = None) -> int:
    """How many of a context's last tokens the model sees: the past-block_size policy that every
    decode path follows (the uncached and cached loops here, StaticDecoder.decode in
    fast_decode.py), so that all of them give the same tokens.

    A context of T tokens, newest last, fits while T <= block_size: the model sees all of it.
    Past that it sees the last `keep`: a prompt is read with keep = block_size, its last
    block_size tokens; while decoding, a full context that gets one more token is cut to its
    last keep tokens (default block_size // 2, at least 1), which a cached path prefills afresh
    into an emptied cache. Positions then restart from 0, exactly as in a fresh uncached forward
    of the cut context. A larger keep remembers more but prefills again more often (every
    block_size - keep tokens). Learned positions end at block_size, so a sliding window with
    them is cut too; only a rolling model (config.rolling) sees every token, always."""
    if config.rolling or T <= config.block_size:
        return T
    return max(1, config.block_size // 2) if keep is None else keep


def check_generate_args(idx, max_new_tokens, temperature, top_k, top_p, num_samples, keep,
                        block_size, generator=None, seed=None):
    """One clear message before any work is done. Returns the generator (a seed's, on idx's device)."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (B, T) with T >= 1, got shape {tuple(idx.shape)}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, numbers.Integral)
                             or not 1 <= keep <= block_size):
        raise ValueError(f"keep={keep!r}: must be an integer in [1, block_size={block_size}]")
    if generator is None and seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    return generator


def prefill(model, tokens, cache):
    """Run tokens (B, T) through the model into the cache; the last position's logits, (B, V).
    A rolling model's long prompt goes in block_size at a time (its ring keeps the last window)."""
    for chunk in tokens.split(model.config.block_size, dim=1):
        logits = model(chunk, cache=cache, last_only=True)[0][:, -1]
    return logits


def _cached_logits(model, idx, max_new_tokens, pick, num_samples, keep):
    cfg = model.config
    tokens = idx[:, -visible_context(idx.size(1), cfg, cfg.block_size):]   # what the model sees
    cache = model.new_cache(idx.size(0), device=idx.device)
    logits = prefill(model, tokens, cache)                              # (B, V)
    if num_samples > 1:
        # all samples continue the same prompt: copy its cache rather than recompute it
        cache.repeat_batch(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)           # (B*ns, V)
        tokens = tokens.repeat_interleave(num_samples, dim=0)
    for step in range(max_new_tokens):
        nxt = pick(logits)                                              # (N,)
        yield logits, nxt
        if step == max_new_tokens - 1:
            break
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        seen = visible_context(tokens.size(1), cfg, keep)
        if seen < tokens.size(1):                                       # cut: prefill afresh
            tokens = tokens[:, -seen:]
            cache.reset()
            logits = model(tokens, cache=cache, last_only=True)[0][:, -1]
        else:                                                           # one new token
            logits = model(nxt[:, None], cache=cache, last_only=True)[0][:, -1]


def _rolling_logits(model, idx, max_new_tokens, pick, num_samples):
    """A sliding-window model with rotary positions: the whole prompt into a RollingKVCache,
    then one token per step; the ring never fills, so nothing is ever cut or prefilled again."""
    cache = model.new_cache(idx.size(0), device=idx.device)            # a RollingKVCache
    logits = prefill(model, idx, cache)                                 # (B, V)
    if num_samples > 1:
        cache.repeat_batch(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)           # (B*ns, V)
    for step in range(max_new_tokens):
        nxt = pick(logits)
        yield logits, nxt
        if step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], cache=cache, last_only=True)[0][:, -1]  # one new token


def _uncached_logits(model, idx, max_new_tokens, pick, num_samples, keep):
    cfg = model.config
    tokens = idx[:, -visible_context(idx.size(1), cfg, cfg.block_size):]
    tokens = tokens.repeat_interleave(num_samples, dim=0)
    for step in range(max_new_tokens):
        logits = model(tokens, last_only=True)[0][:, -1]                # whole context, every step
        nxt = pick(logits)
        yield logits, nxt
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        tokens = tokens[:, -visible_context(tokens.size(1), cfg, keep):]


def decode(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
           generator=None, seed=None, num_samples=1, use_cache=True, keep=None):
    """Yield (logits (N, V), next_token (N,)) for each new token, N = B * num_samples.
    The logits are the model's raw output for that step, before temperature and filtering."""
    generator = check_generate_args(idx, max_new_tokens, temperature, top_k, top_p, num_samples,
                                    keep, model.config.block_size, generator, seed)

    def pick(logits):
        return sample_next(logits, temperature, top_k, top_p, generator)

    with eval_mode(model), torch.no_grad():  # dropout off: the sampler alone decides
        if not use_cache:
            yield from _uncached_logits(model, idx, max_new_tokens, pick, num_samples, keep)
        elif model.config.rolling:
            yield from _rolling_logits(model, idx, max_new_tokens, pick, num_samples)
        else:
            yield from _cached_logits(model, idx, max_new_tokens, pick, num_samples, keep)


def generate(model, idx, max_new_tokens, num_samples=1, **kwargs):
    """idx (B, T) -> (B * num_samples, T + max_new_tokens): the prompt rows (each repeated
    num_samples times, samples of one prompt adjacent) followed by their new tokens."""
    new = [nxt[:, None] for _, nxt in decode(model, idx, max_new_tokens, num_samples=num_samples, **kwargs)]
    return torch.cat([idx.repeat_interleave(num_samples, dim=0), *new], dim=1)


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off inside the block (generation and evaluation are not random), then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
