"""The model: attention math against worked examples and a reference, causality, the KV cache."""

import copy
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, GPTConfig, ConfigError, KVCache, RollingKVCache, attention, causal_softmax, decode
from model.attention import CAUSAL, CausalSelfAttention, Rotary, causal_mask, rotate

torch.set_num_threads(2)

X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def tiny(**kw):
    cfg = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg)).eval()


# ---------------------------------------------------------------- the lesson's worked examples

def test_worked_example_q_k_v_equal_x():
    out, w = attention(X, X, X, mask=None, return_weights=True)
    assert torch.equal(w.round(decimals=3), torch.tensor(
        [[0.401, 0.198, 0.401], [0.198, 0.401, 0.401], [0.248, 0.248, 0.503]]))
    assert torch.equal(out.round(decimals=3), torch.tensor(
        [[0.802, 0.599], [0.599, 0.802], [0.752, 0.752]]))


def test_worked_example_with_projections():
    Wq = torch.tensor([[1, 0.5], [0, 1]])
    Wk = torch.tensor([[0.5, 1], [1, 0]])
    Wv = torch.tensor([[1, -0.5], [0.5, 1]])
    out, w = attention(X @ Wq, X @ Wk, X @ Wv, mask=None, return_weights=True)
    assert torch.equal(w.round(decimals=3), torch.tensor(
        [[0.248, 0.248, 0.503], [0.401, 0.198, 0.401], [0.284, 0.14, 0.576]]))
    assert torch.equal(out.round(decimals=3), torch.tensor(
        [[1.128, 0.376], [1.102, 0.198], [1.218, 0.286]]))


def test_worked_example_causal_softmax():
    scores = torch.tensor([[2, 1, 0.5], [1.2, 2.1, 0.7], [0.8, 1.3, 2.2]])
    assert torch.equal(causal_softmax(scores).round(decimals=3), torch.tensor(
        [[1, 0, 0], [0.289, 0.711, 0], [0.149, 0.246, 0.605]]))


# ---------------------------------------------------------------- against a reference we did not write

@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch_multihead_attention(bias, window):
    torch.manual_seed(0)
    C, nh, T = 32, 4, 7
    cfg = GPTConfig(n_embd=C, n_head=nh, block_size=T, bias=bias, attn_impl="explicit", attn_window=window)
    ours = CausalSelfAttention(cfg).eval()
    ref = nn.MultiheadAttention(C, nh, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
            ref.out_proj.bias.copy_(ours.o_proj.bias)
    x = torch.randn(2, T, C)
    hidden = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True = may not attend
    if window:  # and, in a sliding window, the keys `window` or more positions back
        hidden |= torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-window)
    ref_out, ref_w = ref(x, x, x, attn_mask=hidden, need_weights=True, average_attn_weights=False)
    ours.keep_weights = True
    with torch.no_grad():
        out = ours(x)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.weights, ref_w, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- explicit path == SDPA path

VARIANTS = [(h, kv, pe) for h, kv in [(4, 4), (4, 2), (4, 1)] for pe in ["learned", "rope"]]


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("n_head,n_kv_head,pos_emb", VARIANTS)
def test_explicit_equals_sdpa(n_head, n_kv_head, pos_emb, window):
    m = tiny(n_head=n_head, n_kv_head=n_kv_head, pos_emb=pos_emb, attn_impl="explicit", attn_window=window)
    idx = torch.randint(0, 37, (3, 16))
    with torch.no_grad():
        explicit, _ = m(idx)
        for block in m.blocks:
            block.attn.impl = "sdpa"
        fast, _ = m(idx)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t_q", [1, 3, 8])
def test_sdpa_end_aligned_mask_when_fewer_queries_than_keys(t_q):
    from model.attention import sdpa_attention, visible_keys
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, t_q, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = visible_keys(t_q, 8)
    assert (mask is None) == (t_q == 1) and (mask is CAUSAL) == (t_q == 8)  # t_q == t_k: SDPA's own triangle
    torch.testing.assert_close(sdpa_attention(q, k, v, mask), attention(q, k, v, mask), atol=1e-6, rtol=1e-5)
    # the mask is end-aligned: the last query sees every key, the first only the first 9 - t_q
    w = attention(q, k, v, mask, return_weights=True)[1]
    assert (w[..., -1, :] > 0).all() and (w[..., 0, 9 - t_q:] == 0).all()


# ---------------------------------------------------------------- causality and the weights

@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_future_tokens_never_change_past_logits(pos_emb):
    m = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, 37, (1, 16))
    for t in [0, 5, 14]:
        changed = idx.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 1) % 37
        with torch.no_grad():
            a, _ = m(idx)
            b, _ = m(changed)
        assert torch.equal(a[:, :t + 1], b[:, :t + 1])
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])  # the change did reach later positions


def test_attention_rows_sum_to_one_and_future_is_exactly_zero():
    m = tiny(n_kv_head=2)
    maps = m.attention_maps(torch.randint(0, 37, (2, 16)))
    assert len(maps) == 2
    for w in maps:
        assert w.shape == (2, 4, 16, 16)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 16))
        future = torch.triu(torch.ones(16, 16, dtype=torch.bool), diagonal=1)
        assert (w[..., future] == 0).all()
        assert (w[..., ~future] > 0).all()


# ---------------------------------------------------------------- cached == uncached decoding

def steps(m, idx, n, **kw):
    """Run decode and return (logits (n, N, V), tokens (N, n))."""
    out = list(decode(m, idx, n, temperature=0, **kw))
    return torch.stack([lg for lg, _ in out]), torch.stack([t for _, t in out], dim=1)


def assert_cached_matches(m, idx, n, atol=1e-5, **kw):
    lc, tc = steps(m, idx, n, use_cache=True, **kw)
    lu, tu = steps(m, idx, n, use_cache=False, **kw)
    assert torch.equal(tc, tu), "greedy tokens differ between cached and uncached decoding"
    torch.testing.assert_close(lc, lu, atol=atol, rtol=0)
    return tc


@pytest.mark.parametrize("n_head,n_kv_head,pos_emb", VARIANTS)
@pytest.mark.parametrize("prompt_len", [1, 4, 15])  # 15 = block_size - 1
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_cached_equals_uncached(n_head, n_kv_head, pos_emb, prompt_len, impl):
    m = tiny(n_head=n_head, n_kv_head=n_kv_head, pos_emb=pos_emb, attn_impl=impl)
    idx = torch.randint(0, 37, (2, prompt_len))  # batch of 2 different prompts
    assert_cached_matches(m, idx, 16 - prompt_len)


def test_cached_logits_equal_a_plain_forward_of_the_same_tokens():
    # a second reference, independent of the uncached generation loop
    m = tiny(pos_emb="rope", n_kv_head=2)
    idx = torch.randint(0, 37, (2, 3))
    logits, toks = steps(m, idx, 13, use_cache=True)
    seq = torch.cat([idx, toks], dim=1)
    with torch.no_grad():
        full, _ = m(seq[:, :16])
    for i in range(13):
        torch.testing.assert_close(logits[i], full[:, 2 + i], atol=1e-5, rtol=0)


def test_num_samples_share_one_prefill():
    m = tiny(n_kv_head=1)
    idx = torch.randint(0, 37, (2, 5))
    toks = assert_cached_matches(m, idx, 8, num_samples=3)
    assert toks.shape == (6, 8)
    assert torch.equal(toks[0], toks[1])  # greedy: all samples of one prompt agree
    # sampled: every row draws its own tokens from the very first step
    gen = list(decode(m, idx[:1], 1, temperature=5.0, num_samples=64, seed=0))
    assert len(set(gen[0][1].tolist())) > 1


def test_dropout_model_in_eval_mode():
    m = tiny(dropout=0.3)
    m.train()  # generation must switch dropout off by itself, and restore the mode afterwards
    assert_cached_matches(m, torch.randint(0, 37, (2, 3)), 10)
    assert m.training


def test_cache_reused_after_reset():
    m = tiny(pos_emb="rope")
    a, b = torch.randint(0, 37, (1, 6)), torch.randint(0, 37, (1, 4))
    cache = m.new_cache(1)
    with torch.no_grad():
        m(a, cache=cache)
        m(a[:, :1], cache=cache)
        cache.reset()
        reused = m(b, cache=cache)[0]
        reused_step = m(b[:, :1], cache=cache)[0]
        fresh = m(torch.cat([b, b[:, :1]], dim=1))[0]
    torch.testing.assert_close(reused, fresh[:, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(reused_step[:, -1], fresh[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("keep", [None, 1, 16])
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_past_block_size(pos_emb, keep, impl):
    m = tiny(pos_emb=pos_emb, n_kv_head=2, attn_impl=impl)
    idx = torch.randint(0, 37, (2, 5))
    toks = assert_cached_matches(m, idx, 40, keep=keep)  # 2.5 windows
    assert toks.shape == (2, 40)


def test_prompt_longer_than_block_size():
    m = tiny()
    assert_cached_matches(m, torch.randint(0, 37, (1, 40)), 10)


def test_bf16_cached_close_to_uncached():
    # bf16 keeps ~3 significant digits, and cached/uncached add up the same numbers in a
    # different order, so logits agree only to about 1e-2 of their scale: compare the cached
    # logits with a plain bf16 forward of the same tokens, atol 0.05 (fp32 uses 1e-5)
    m = tiny(n_kv_head=2, pos_emb="rope").to(torch.bfloat16)
    idx = torch.randint(0, 37, (2, 4))
    logits, toks = steps(m, idx, 12, use_cache=True)
    assert logits.dtype == torch.bfloat16
    with torch.no_grad():
        full, _ = m(torch.cat([idx, toks], dim=1)[:, :16])
    for i in range(12):
        torch.testing.assert_close(logits[i].float(), full[:, 3 + i].float(), atol=0.05, rtol=0)


# ---------------------------------------------------------------- sampling controls

def test_seed_reproducible_and_filters():
    m = tiny()
    idx = torch.randint(0, 37, (1, 3))
    a = m.generate(idx, 20, temperature=1.0, top_k=5, seed=123)
    b = m.generate(idx, 20, temperature=1.0, top_k=5, seed=123)
    assert torch.equal(a, b)
    from model import sample_next
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {3}
    picked = {sample_next(logits, 1.0, top_p=0.9, generator=g).item() for _ in range(200)}
    # probs 0.644, 0.237, 0.087, 0.032: tokens 3, 2, 1 reach 0.968 >= 0.9, token 0 is cut
    assert picked <= {1, 2, 3} and 3 in picked
    assert sample_next(logits, 0).item() == 3


LOGITS = torch.tensor([0.0, 1.0, 2.0, 3.0, -30.0])
# what each setting must draw from, worked out by hand from LOGITS (softmax: .032 .087 .237 .644 0)
SAMPLING_CASES = [
    (dict(temperature=1.0), torch.softmax(LOGITS, -1)),
    (dict(temperature=0.5), torch.softmax(LOGITS / 0.5, -1)),
    (dict(temperature=1.0, top_k=2), torch.softmax(torch.tensor([-math.inf, -math.inf, 2.0, 3.0, -math.inf]), -1)),
    # nucleus 0.9: tokens 3, 2 and 1 (the mass ranked above token 1 is .881 < .9; above token 0, .968)
    (dict(temperature=1.0, top_p=0.9), torch.softmax(torch.tensor([-math.inf, 1.0, 2.0, 3.0, -math.inf]), -1)),
]


@pytest.mark.parametrize("kw,probs", SAMPLING_CASES, ids=[repr(kw) for kw, _ in SAMPLING_CASES])
def test_sampling_frequencies_follow_the_probabilities(kw, probs):
    """100k seeded draws: each token's frequency within 6 standard deviations of its probability
    (a correct sampler misses that about once in 10^8 seeds; argmax(p * q) instead of p / q is off
    by dozens of them), and a filtered token never drawn."""
    from model import sample_next
    n = 100_000
    picked = sample_next(LOGITS.repeat(n, 1), generator=torch.Generator().manual_seed(0), **kw)
    freq = torch.bincount(picked, minlength=5).double() / n
    probs = probs.double()
    assert ((freq - probs).abs() <= 6 * (probs * (1 - probs) / n).sqrt()).all(), (freq, probs)
    assert (freq[probs == 0] == 0).all()


TORCH_VERSION = ".".join(torch.__version__.split(".")[:2])


@pytest.mark.skipif(TORCH_VERSION != "2.13", reason=(
    f"torch {TORCH_VERSION}: the exact equality with torch.multinomial was verified on torch 2.13 only "
    f"(multinomial's draw order is not part of its API); the frequencies are checked on every version"))
def test_sampling_draws_what_cpu_multinomial_draws_on_torch_2_13():
    """On torch 2.13's CPU, torch.multinomial draws one sample by the same exponential race, from
    the same random numbers: a seeded sample_next picks exactly what it picks."""
    from model import sample_next
    torch.manual_seed(0)
    logits = torch.randn(3, 37) * 2
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):
        want = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=theirs).squeeze(-1)
        assert torch.equal(sample_next(logits, 1.0, generator=ours), want)


BAD_GENERATION = [dict(temperature=-1), dict(temperature=float("nan")), dict(temperature=float("inf")),
                  dict(temperature="0.8"), dict(top_k=0), dict(top_k=2.5), dict(top_k=True),
                  dict(top_p=0.0), dict(top_p=1.5), dict(top_p=float("nan")), dict(num_samples=0),
                  dict(num_samples=1.0), dict(keep=0), dict(keep=2.5)]


@pytest.mark.parametrize("kw", BAD_GENERATION, ids=repr)
def test_bad_generation_values(kw):
    """One set of checks (check_sampling) for the library and sample.py: a ValueError naming the
    argument and its value, before any work."""
    m = tiny()
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}: must be")):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 3, **kw)
    with pytest.raises(ValueError, match="max_new_tokens=-1: must be"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), -1)


# ---------------------------------------------------------------- training sanity and errors

def test_tiny_model_overfits_short_text():
    torch.manual_seed(0)
    text = "to be or not to be, that is the question. "
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(c) for c in text])
    m = GPT(GPTConfig(vocab_size=len(vocab), block_size=32, n_layer=2, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, y = data[None, :32], data[None, 1:33]
    first = m(x, y)[1].item()
    for _ in range(150):
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.5
    assert loss.item() < 0.2 * first


def test_idx_longer_than_block_size_is_a_clear_error():
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kw,match", [
    (dict(n_embd=30, n_head=4), "divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "multiple of n_kv_head"),
    (dict(n_head=4, n_kv_head=8), "multiple of n_kv_head"),
    (dict(n_embd=12, n_head=4, pos_emb="rope"), "even"),
    (dict(pos_emb="alibi"), "pos_emb"),
    (dict(attn_impl="flash"), "attn_impl"),
    (dict(dropout=1.0), "dropout"),
    (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=2.5), "vocab_size"),
    (dict(block_size=16, attn_window=17), r"attn_window must be 0 .* or in 1\.\.block_size=16"),
    (dict(attn_window=-1), "attn_window"),
    (dict(attn_window=True), "attn_window"),
    (dict(attn_window=4.0), "attn_window"),
    (dict(rope_base=float("nan")), "rope_base"),
    (dict(rope_base=float("inf")), "rope_base"),
    (dict(logit_softcap=float("nan")), "logit_softcap"),
    (dict(logit_softcap=float("inf")), "logit_softcap"),
])
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**kw)


def test_param_count_and_tied_head():
    m = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384))
    assert m.lm_head.weight is m.wte.weight
    # nanoGPT's shakespeare_char model reports 10.65M parameters (no biases here: a little fewer)
    assert 10.6e6 < m.num_params() < 10.8e6


# ---------------------------------------------------------------- speedrun options (issue 7)

SPEEDRUN = dict(norm="rmsnorm", embed_norm=True, qk_norm=True, mlp_act="relu2",
                tie_embeddings=False, logit_softcap=15.0, pos_emb="rope")


@pytest.mark.parametrize("option", [dict(norm="rmsnorm"), dict(embed_norm=True), dict(qk_norm=True),
                                    dict(mlp_act="relu2"), dict(tie_embeddings=False),
                                    dict(logit_softcap=2.0), dict(zero_init=True), SPEEDRUN,
                                    dict(SPEEDRUN, attn_window=5)])
def test_options_keep_cached_equal_uncached_and_train(option):
    m = tiny(**option, n_kv_head=2)
    with torch.no_grad():  # zero_init would make every logit equal; perturb to make the test bite
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert_cached_matches(m, torch.randint(0, 37, (2, 3)), 30)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x = torch.randint(0, 37, (4, 16))
    losses = []
    for _ in range(30):
        loss = m(x[:, :-1], x[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_zero_init_untied_head_starts_uniform_and_blocks_are_identity():
    m = tiny(zero_init=True, tie_embeddings=False)
    assert m.lm_head.weight is not m.wte.weight
    for block in m.blocks:
        assert (block.attn.o_proj.weight == 0).all() and (block.mlp.proj.weight == 0).all()
    logits, loss = m(torch.randint(0, 37, (1, 8)), torch.randint(0, 37, (1, 8)))
    assert (logits == 0).all()
    torch.testing.assert_close(loss, torch.log(torch.tensor(37.0)))


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_every_norm_takes_the_one_explicit_eps(norm):
    """Every norm the model computes (the blocks', the embedding's, qk-norm's; the forward and the
    static decode step) passes NORM_EPS: without it, rms_norm takes the dtype's machine epsilon, and
    the same model normalises differently in bfloat16 (7.8e-3) than in float32 (1.2e-7)."""
    from torch.overrides import TorchFunctionMode
    from model.attention import NORM_EPS, rms_norm
    from model.fast_decode import StaticDecoder

    class Eps(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (F.rms_norm, F.layer_norm):
                seen.append(kwargs.get("eps", args[3] if len(args) > 3 else None))
            return func(*args, **kwargs)

    m = tiny(norm=norm, embed_norm=True, qk_norm=True, pos_emb="rope")
    seen = []
    with Eps(), torch.no_grad():
        m(torch.randint(0, 37, (1, 8)))
        dec = StaticDecoder(m, 1)
        dec.prefill(torch.randint(0, 37, (1, 4)))
        dec.step(torch.tensor([3]))
    assert len(seen) > 4 * m.config.n_layer and set(seen) == {NORM_EPS}
    # and so a small-scale vector normalises the same in bfloat16 as in float32
    x = 0.01 * torch.randn(1, 32)
    assert rms_norm(x.bfloat16()).float().allclose(rms_norm(x), rtol=2e-2, atol=2e-2)


def test_rmsnorm_is_parameter_free_and_softcap_bounds_logits():
    ln, rms = tiny(), tiny(norm="rmsnorm")
    assert rms.num_params() < ln.num_params()
    assert not any("ln_" in name for name, _ in rms.named_parameters())
    m = tiny(logit_softcap=2.0)
    with torch.no_grad():
        m.lm_head.weight.mul_(100)
        logits, _ = m(torch.randint(0, 37, (1, 8)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9  # tanh reaches 1.0 in fp32


# ---------------------------------------------------------------- sliding-window attention

def test_window_mask_is_a_band_under_the_diagonal():
    """Written out by hand: query i sees keys i - window < j <= i."""
    assert torch.equal(causal_mask(5, 5, window=2).int(), torch.tensor(
        [[1, 0, 0, 0, 0],
         [1, 1, 0, 0, 0],
         [0, 1, 1, 0, 0],
         [0, 0, 1, 1, 0],
         [0, 0, 0, 1, 1]]))
    # end-aligned, as with a KV cache: the 2 queries are positions 3 and 4 of 5
    assert torch.equal(causal_mask(2, 5, window=3).int(), torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]))
    assert torch.equal(causal_mask(4, 4, window=4), causal_mask(4, 4))      # a window that covers all
    assert torch.equal(causal_mask(4, 4, window=1), torch.eye(4, dtype=torch.bool))  # itself only


def test_windowed_weights_are_exactly_zero_outside_the_band():
    m = tiny(n_kv_head=2, pos_emb="rope", attn_window=5)
    ones = torch.ones(16, 16, dtype=torch.bool)
    band = ones.tril() & ~ones.tril(diagonal=-5)     # i - 5 < j <= i, not from causal_mask
    for w in m.attention_maps(torch.randint(0, 37, (2, 16))):
        assert (w[..., ~band] == 0).all() and (w[..., band] > 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 16))


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("n_layer", [1, 3])
def test_receptive_field_grows_by_window_minus_one_per_layer(n_layer, pos_emb, impl):
    """One layer: the last token's logits depend on its own window of W tokens and on nothing
    before. L layers: each reaches W - 1 further back, through the keys of the layer below."""
    W, T = 4, 16
    m = tiny(n_layer=n_layer, pos_emb=pos_emb, attn_impl=impl, attn_window=W)
    idx = torch.randint(0, 37, (1, T))
    reach = n_layer * (W - 1)                             # 3 or 9 tokens back

    def last_logits_change(back):
        changed = idx.clone()
        changed[0, T - 1 - back] = (changed[0, T - 1 - back] + 1) % 37
        with torch.no_grad():
            return not torch.equal(m(idx)[0][0, -1], m(changed)[0][0, -1])
    assert last_logits_change(reach)
    assert not last_logits_change(reach + 1)              # exactly nothing: its weight is 0


def test_rope_angles_past_block_size():
    """RoPE's angles are computed for any position (a rolling model decodes on and on): the
    score of a query and a key still depends only on their distance, far past block_size."""
    torch.manual_seed(0)
    rope = Rotary(head_size=8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def at(x, p):  # x turned to position p
        return rotate(x, *rope.cos_sin(torch.tensor([p])))

    near = (at(q, 3) * at(k, 1)).sum()
    for i in (1_000, 20_000):
        torch.testing.assert_close((at(q, i) * at(k, i - 2)).sum(), near, atol=1e-3, rtol=0)
    cos, sin = rope.cos_sin(torch.tensor([0, 5_000]))
    assert torch.equal(cos[0], torch.ones(4)) and (cos[1] ** 2 + sin[1] ** 2 - 1).abs().max() < 1e-6


def test_only_a_rolling_model_runs_past_block_size():
    """Window + RoPE: positions go on. Window + learned positions, or RoPE without a window:
    block_size is the end, and the message says why."""
    idx = torch.randint(0, 37, (1, 40))
    with torch.no_grad():
        assert tiny(pos_emb="rope", attn_window=4)(idx)[0].shape == (1, 40, 37)
    with pytest.raises(ValueError, match="block_size 16.*learned positions: their table ends at block_size"):
        tiny(attn_window=4)(idx)
    with pytest.raises(ValueError, match="longer than the model's block_size 16; crop"):
        tiny(pos_emb="rope")(idx)


def test_ring_holds_position_p_at_slot_p_mod_window():
    """The rolling cache's layout, against the plain cache holding every position: after a prompt
    longer than the window and single steps past block_size, slot s holds the key and value of
    the latest position p with p % W == s, and slot_positions says which one."""
    W = 5
    m = tiny(pos_emb="rope", attn_window=W, n_kv_head=2)
    idx = torch.randint(0, 37, (2, 43))
    ring = m.new_cache(2)
    assert isinstance(ring, RollingKVCache) and ring.k.shape == (2, 2, 2, W, 8)
    full = KVCache.for_model(m.config, 2, max_len=43)           # every position, in order
    with torch.no_grad():
        m(idx, cache=full)
        m(idx[:, :9], cache=ring)                                # a 9-token prompt (> W) ...
        for t in range(9, 43):                                   # ... then one token at a time
            m(idx[:, t:t + 1], cache=ring)
    assert ring.pos == 43 and ring.k.shape == (2, 2, 2, W, 8)    # 43 positions, still W slots
    held = ring.slot_positions(42)
    assert held.tolist() == [40, 41, 42, 38, 39]
    torch.testing.assert_close(ring.k, full.k[:, :, :, held], atol=1e-5, rtol=0)
    torch.testing.assert_close(ring.v, full.v[:, :, :, held], atol=1e-5, rtol=0)
    assert RollingKVCache(1, 1, 1, 4, 2).slot_positions(1).tolist() == [0, 1, -2, -1]  # 2, 3: empty


RING = dict(pos_emb="rope", attn_window=4, n_head=4, n_kv_head=2)


@pytest.mark.parametrize("piece", [1, 2, 3, 4, 7, 16])
def test_ring_takes_pieces_of_any_size(piece):
    """Feed 45 tokens through the rolling cache `piece` at a time: every position's logits equal
    one forward of all 45. A piece longer than one token attends over the ring as it was plus its
    own keys (they would overwrite keys its first queries still need), then keeps the last W."""
    m = tiny(**RING)
    idx = torch.randint(0, 37, (2, 45))
    cache = m.new_cache(2)
    with torch.no_grad():
        want, _ = m(idx)
        got = torch.cat([m(chunk, cache=cache)[0] for chunk in idx.split(piece, dim=1)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def ring_model():
    """A rolling model (window 4, RoPE, GQA) that has memorised a random 300-token text
    (150 AdamW steps, ~2 s): its greedy picks are varied and clear-cut, whereas a random
    model's greedy text soon repeats one token, where a wrong ring could hide."""
    torch.manual_seed(0)
    text = torch.randint(0, 37, (300,))
    m = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_embd=32, **RING))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        ix = torch.randint(300 - 17, (16,), generator=g)
        loss = m(torch.stack([text[i:i + 16] for i in ix]), torch.stack([text[i + 1:i + 17] for i in ix]))[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), text


@pytest.mark.parametrize("prompt_len", [1, 3, 9, 40])   # 9 > the window, 40 > block_size
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_rolling_cache_equals_uncached_far_past_block_size(ring_model, prompt_len, impl):
    """GQA, a batch of 2 prompts x 2 samples, 3 x block_size new tokens: the ring's logits equal
    the whole sequence run through the model every step, and greedy picks the same tokens."""
    m, text = ring_model
    m = copy.deepcopy(m)
    for block in m.blocks:
        block.attn.impl = impl
    idx = torch.stack([text[5:5 + prompt_len], text[100:100 + prompt_len]])
    toks = assert_cached_matches(m, idx, 3 * 16 + 2, num_samples=2)
    assert toks.shape == (4, 50) and all(len(set(row.tolist())) > 10 for row in toks)  # varied text


def test_rolling_logits_equal_one_forward_of_the_whole_text(ring_model):
    """A reference independent of the uncached loop: one forward of prompt + generated tokens,
    positions 0..57 with the band mask, gives every step's logits."""
    m, text = ring_model
    idx = torch.stack([text[:10], text[50:60]])
    logits, toks = steps(m, idx, 48, use_cache=True)
    with torch.no_grad():
        full, _ = m(torch.cat([idx, toks], dim=1))
    torch.testing.assert_close(logits, full[:, 9:57].transpose(0, 1), atol=1e-5, rtol=0)


def test_rolling_reads_the_whole_prompt():
    """A window as wide as block_size in 3 layers reaches 3 x 15 = 45 tokens back, more than
    block_size: a 40-token prompt counts in full, on both paths (cutting it to its last 16,
    as a model without a window must, would change the logits)."""
    m = tiny(pos_emb="rope", attn_window=16, n_layer=3)
    idx = torch.randint(0, 37, (2, 40))
    assert_cached_matches(m, idx, 20)
    whole, cut = steps(m, idx, 1)[0], steps(m, idx[:, -16:], 1)[0]
    assert (whole - cut).abs().max() > 1e-3


def test_rolling_decode_never_prefills_again_and_never_grows(monkeypatch):
    """Past block_size every step is one token through the model; the cache stays W slots."""
    m = tiny(**RING)
    sizes, caches = [], []
    real = RollingKVCache.update

    def update(self, layer, k, v):
        caches.append(self.k.shape)
        return real(self, layer, k, v)
    monkeypatch.setattr(RollingKVCache, "update", update)
    forward = m.forward
    m.forward = lambda idx, *a, **kw: sizes.append(idx.size(1)) or forward(idx, *a, **kw)
    list(decode(m, torch.randint(0, 37, (1, 20)), 60, temperature=0))
    assert sizes == [16, 4] + [1] * 59                       # the prompt, 16 at a time, then 1 by 1
    assert set(caches) == {(2, 1, 2, 4, 8)}


def test_learned_window_keeps_the_cut_and_prefill_policy():
    """Learned positions end at block_size, window or not: past it, the context is cut and
    prefilled again, and cached still equals uncached."""
    m = tiny(attn_window=5, n_kv_head=2)
    assert isinstance(m.new_cache(1), KVCache)
    assert_cached_matches(m, torch.randint(0, 37, (2, 20)), 40)
