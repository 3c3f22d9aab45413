"""The static-cache decode step (model/fast_decode.py) against the plain KV cache path.

On CPU the fixed-shape step runs eagerly: same shapes, same in-place cache writes, same
position tensor and mask as the CUDA graph replays, so these tests check its logic token for
token (greedy, fp32). The CUDA-graph tests at the bottom skip without a GPU."""

import re
from dataclasses import fields

import pytest
import torch

from model import GPT, GPTConfig
from model.fast_decode import DecodeCheckError, StaticDecoder, decode_static
from model.generate import decode
from tests.test_gpu_invariants import freed_at_once  # one check for the CPU and the CUDA test

BLOCK = 16
CONFIGS = {
    "mha-learned": dict(),
    "gqa-rope": dict(n_head=4, n_kv_head=2, pos_emb="rope"),
    "mqa-bias-explicit": dict(n_head=4, n_kv_head=1, bias=True, attn_impl="explicit"),
    "speedrun-options": dict(pos_emb="rope", norm="rmsnorm", embed_norm=True, qk_norm=True,
                             mlp_act="relu2", tie_embeddings=False, logit_softcap=30.0),
    "window-learned": dict(attn_window=5),                          # the band, and re-prefills
    "window-rope-gqa": dict(n_head=4, n_kv_head=2, pos_emb="rope", attn_window=5),  # a ring
}
cuda = pytest.mark.cuda  # skipped without a GPU (tests/conftest.py)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """fp32 means fp32 here, whatever another test set: TF32 matmuls would blur the comparison."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def make(device="cpu", **kw):
    """A small random model whose weights are scaled up, so its logits are peaked: greedy
    choices are then clear-cut, not near-ties that rounding could flip."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**dict(vocab_size=48, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32), **kw}))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model.to(device).eval()


def run(steps):
    """Collect a decode generator: (logits (N, n, V), tokens (N, n))."""
    logits, tokens = zip(*steps)
    return torch.stack(logits, 1), torch.stack(tokens, 1)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("prompt_len", [1, BLOCK - 1])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_static_step_matches_cached_greedy(name, prompt_len, num_samples):
    # 40 new tokens past a 16-token window: the static path re-prefills like the plain one
    model = make(**CONFIGS[name])
    idx = torch.randint(0, 48, (2, prompt_len), generator=torch.Generator().manual_seed(1))
    want_l, want_t = run(decode(model, idx, 40, temperature=0, num_samples=num_samples))
    got_l, got_t = run(decode_static(model, idx, 40, temperature=0, num_samples=num_samples))
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_l, want_l, rtol=1e-4, atol=1e-4)


def test_static_step_matches_uncached_logits():
    """Independent of the KV cache code: each step's logits equal a fresh forward of the window."""
    model = make(pos_emb="rope", n_head=4, n_kv_head=2)
    idx = torch.randint(0, 48, (1, 3), generator=torch.Generator().manual_seed(2))
    want_l, want_t = run(decode(model, idx, 30, temperature=0, use_cache=False))
    got_l, got_t = run(decode_static(model, idx, 30, temperature=0))
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_l, want_l, rtol=1e-4, atol=1e-4)


SAMPLING = {
    "temperature": dict(temperature=1.3),
    "top-k": dict(temperature=0.9, top_k=5),
    "top-p": dict(temperature=0.9, top_p=0.8),
    "all": dict(temperature=0.9, top_k=20, top_p=0.95),
}


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("name", CONFIGS)
def test_sampling_with_a_seed_same_tokens_on_every_path(name, sampling):
    """Uncached, cached and static draw the same tokens from the same seed: each path samples
    with the same generator calls, in the same order, from the same logits (to rounding)."""
    model = make(**CONFIGS[name])
    idx = torch.randint(0, 48, (2, 4), generator=torch.Generator().manual_seed(3))
    kw = dict(SAMPLING[sampling], seed=7, num_samples=2)
    cached = run(decode(model, idx, 30, **kw))[1]                     # 30 new: past the window
    assert torch.equal(run(decode(model, idx, 30, use_cache=False, **kw))[1], cached)
    assert torch.equal(run(decode_static(model, idx, 30, **kw))[1], cached)
    assert len(set(cached.flatten().tolist())) > 3                   # sampled, not one token


def test_stale_cache_contents_are_masked_and_decoder_is_reusable():
    """Attention runs over all max_len slots; slots not yet written must get weight 0. Fill
    them with junk first: the tokens must not change. Decoding twice must not either."""
    model = make(n_head=4, n_kv_head=2)
    idx = torch.randint(0, 48, (1, 5), generator=torch.Generator().manual_seed(4))
    want = run(decode(model, idx, 20, temperature=0))[1]
    dec = StaticDecoder(model, 1)
    dec.cache.k.fill_(3.0)
    dec.cache.v.normal_(0, 100)
    assert torch.equal(run(dec.decode(idx, 20, temperature=0))[1], want)
    assert torch.equal(run(dec.decode(idx, 20, temperature=0))[1], want)


@pytest.mark.parametrize("name", ["mha-learned", "window-rope-gqa"])
def test_buffers_keep_their_addresses(name):
    """A CUDA graph replays on fixed memory: prefill, num_samples and the re-prefill past
    block_size (or a ring's wrapping) must all write into the same buffers, never reallocate."""
    model = make(**CONFIGS[name])
    dec = StaticDecoder(model, 6)
    ptrs = [t.data_ptr() for t in (dec.cache.k, dec.cache.v, dec.pos, dec.tok, dec.logits)]
    idx = torch.randint(0, 48, (2, 5), generator=torch.Generator().manual_seed(5))
    run(dec.decode(idx, 3 * BLOCK, temperature=0, num_samples=3))
    assert ptrs == [t.data_ptr() for t in (dec.cache.k, dec.cache.v, dec.pos, dec.tok, dec.logits)]
    assert dec.pos.item() == dec.filled  # the device position and the host's count agree


# --- sliding window: a ring of attn_window slots -----------------------------------------------

RING = CONFIGS["window-rope-gqa"]


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("prompt_len", [2, 9, 40])      # shorter than the window, longer, > block_size
def test_static_ring_matches_the_rolling_cache_far_past_block_size(prompt_len, num_samples):
    """3 x block_size new tokens and more: the static ring (slot pos % W, mask from the position
    tensor, RoPE at positions past block_size) picks the plain rolling cache's tokens, and both
    the uncached reference's."""
    model = make(**RING)
    dec = StaticDecoder(model, 2 * num_samples)
    assert dec.ring and dec.cache.k.shape == (2, 2 * num_samples, 2, 5, 8)   # W = 5 slots per layer
    idx = torch.randint(0, 48, (2, prompt_len), generator=torch.Generator().manual_seed(11))
    kw = dict(temperature=0, num_samples=num_samples)
    want_l, want_t = run(decode(model, idx, 3 * BLOCK + 3, **kw))
    got_l, got_t = run(dec.decode(idx, 3 * BLOCK + 3, **kw))
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_l, want_l, rtol=1e-4, atol=1e-4)
    assert torch.equal(run(decode(model, idx, 3 * BLOCK + 3, use_cache=False, **kw))[1], want_t)
    assert len(set(want_t.flatten().tolist())) > 5                  # not one token over and over
    assert dec.filled == prompt_len + 3 * BLOCK + 2 == dec.pos.item()  # no cut: positions go on


def test_ring_slots_not_written_yet_are_masked():
    """Right after a short prompt most of the ring is empty; whatever it holds (junk here, or an
    earlier sequence) must get weight 0 until the ring wraps and overwrites it."""
    model = make(**RING)
    idx = torch.randint(0, 48, (1, 2), generator=torch.Generator().manual_seed(12))
    want = run(decode(model, idx, 12, temperature=0))[1]
    dec = StaticDecoder(model, 1)
    dec.cache.k.fill_(3.0)
    dec.cache.v.normal_(0, 100)
    assert torch.equal(run(dec.decode(idx, 12, temperature=0))[1], want)
    assert torch.equal(run(dec.decode(idx, 12, temperature=0))[1], want)   # and after a long one


def test_verify_steps_at_several_positions(monkeypatch):
    """verify() runs the step at the first slot, mid-window and the last slot; a ring's mid-ring
    before it wraps (slots not written yet) and past block_size (a wrapped slot)."""
    seen = []
    real = StaticDecoder._step

    def step(self, slots):
        seen.append(int(self.pos))
        real(self, slots)
    monkeypatch.setattr(StaticDecoder, "_step", step)
    StaticDecoder(make(), 2).verify()
    assert seen == [0, 0, BLOCK // 2, BLOCK // 2, BLOCK - 1, BLOCK - 1]
    seen.clear()
    StaticDecoder(make(**RING), 2).verify()
    assert seen == [2, 2, BLOCK + 2, BLOCK + 2] and 2 < RING["attn_window"] - 1 and BLOCK + 2 > BLOCK


def test_verify_catches_a_ring_that_sees_slots_not_written_yet(monkeypatch):
    """A replay whose mask forgets which ring slots hold nothing yet: right once the ring has
    wrapped (every slot written), wrong before."""
    from model.attention import position_mask

    def blind(self, slots, positions):
        slot_pos = self.pos - (self.pos - slots) % self.max_len
        ok = position_mask(positions, slot_pos, self.config.attn_window)      # no `& written`
        return torch.where(ok, 0.0, self.neg_inf).view(1, 1, *ok.shape)

    def replay(self):
        monkeypatch.setattr(StaticDecoder, "_visible", blind)
        try:
            self._step(self._slots())
        finally:
            monkeypatch.setattr(StaticDecoder, "_visible", visible)
    visible = StaticDecoder._visible
    monkeypatch.setattr(StaticDecoder, "_replay", replay)
    with pytest.raises(DecodeCheckError, match="off by .* at position 2 "):
        StaticDecoder(make(**RING), 2).verify()


def test_step_returns_the_static_buffer_and_decode_clones_it():
    model = make()
    dec = StaticDecoder(model, 1)
    steps = list(dec.decode(torch.zeros(1, 2, dtype=torch.long), 4, temperature=0))
    assert all(l.data_ptr() != dec.logits.data_ptr() for l, _ in steps)
    assert not torch.equal(steps[1][0], steps[2][0])  # kept logits were not overwritten


# Every GPTConfig field, each set away from make()'s model. The static step writes out its own
# attention core, so each option must give it the plain cached step's logits.
OPTIONS = {
    "vocab_size": [dict(vocab_size=37)],
    "block_size": [dict(block_size=6)],                 # 12 steps: past it, a re-prefill
    "n_layer": [dict(n_layer=3)],
    "n_head": [dict(n_head=4)],
    "n_kv_head": [dict(n_head=4, n_kv_head=2), dict(n_head=4, n_kv_head=1)],
    "n_embd": [dict(n_embd=48)],
    "dropout": [dict(dropout=0.5)],                     # off when decoding: the same logits
    "bias": [dict(bias=True)],
    "pos_emb": [dict(pos_emb="rope")],
    "rope_base": [dict(pos_emb="rope", rope_base=7.0)],
    "attn_impl": [dict(attn_impl="explicit")],          # the same math, written out
    "attn_window": [dict(attn_window=3), dict(attn_window=3, pos_emb="rope")],  # a band; a ring
    "norm": [dict(norm="rmsnorm")],
    "embed_norm": [dict(embed_norm=True)],
    "qk_norm": [dict(qk_norm=True)],
    "mlp_act": [dict(mlp_act="relu2"), dict(mlp_act="gelu_tanh")],
    "zero_init": [dict(zero_init=True, tie_embeddings=False)],
    "tie_embeddings": [dict(tie_embeddings=False)],
    "logit_softcap": [dict(logit_softcap=3.0)],
    "x0_shortcut": [dict(x0_shortcut=True), dict(x0_shortcut=True, embed_norm=True, pos_emb="rope")],
}
SAME_LOGITS = {"dropout", "attn_impl"}  # options that change how, not what, the model computes


@pytest.mark.parametrize("field", [f.name for f in fields(GPTConfig)])
def test_the_static_step_follows_every_model_option(field):
    """Greedy, 12 steps: the static step's logits equal the plain KV cache's for every option. A new GPTConfig field fails here until it has a case."""
    assert field in OPTIONS, f"GPTConfig.{field} has no case in OPTIONS: add one (StaticDecoder._step must follow it)"
    idx = torch.randint(0, 37, (2, 3), generator=torch.Generator().manual_seed(13))
    base = run(decode(make(), idx, 12, temperature=0))[0]
    for kw in OPTIONS[field]:
        model = make(**kw)
        with torch.no_grad():  # weights initialised with zeros (zero_init, biases, x0_mix) get values: they count
            for p in model.parameters():
                if not p.all():
                    p.normal_(generator=torch.Generator().manual_seed(p.numel()))
        want_l, want_t = run(decode(model, idx, 12, temperature=0))
        got_l, got_t = run(decode_static(model, idx, 12, temperature=0))
        torch.testing.assert_close(got_l, want_l, rtol=1e-4, atol=1e-4, msg=lambda m: f"{kw}: {m}")
        assert torch.equal(got_t, want_t), kw
        changed = want_l.shape != base.shape or not torch.allclose(want_l, base, rtol=1e-3, atol=1e-3)
        assert changed == (field not in SAME_LOGITS), kw  # a case must change what the model computes


def test_errors():
    model = make()
    dec = StaticDecoder(model, 2)
    with pytest.raises(ValueError, match="built for 2 rows"):
        dec.prefill(torch.zeros(1, 3, dtype=torch.long), num_samples=3)
    for kw in (dict(top_p=0.0), dict(temperature=float("nan")), dict(temperature=float("inf")),
               dict(top_p=float("nan")), dict(top_k=2.5)):   # model/generate.py's check_sampling
        (name, value), = kw.items()
        with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}: must be")):
            next(dec.decode(torch.zeros(2, 3, dtype=torch.long), 5, **kw))
    dec.prefill(torch.zeros(2, BLOCK, dtype=torch.long))
    with pytest.raises(ValueError, match="full"):
        dec.step(torch.zeros(2, dtype=torch.long))
    ring = StaticDecoder(make(**RING), 2)                 # a ring is never full
    ring.prefill(torch.zeros(2, BLOCK, dtype=torch.long))
    ring.step(torch.zeros(2, dtype=torch.long))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            StaticDecoder(model, 1, cuda_graph=True)


# --- CUDA graphs ----------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("name", CONFIGS)
def test_cuda_graph_matches_cached_greedy_fp32(name):
    model = make("cuda", **CONFIGS[name])
    idx = torch.randint(0, 48, (2, 5), generator=torch.Generator().manual_seed(6)).cuda()
    want_l, want_t = run(decode(model, idx, 3 * BLOCK, temperature=0, num_samples=3))
    dec = StaticDecoder(model, 6)
    assert dec.graph is not None
    got_l, got_t = run(dec.decode(idx, 3 * BLOCK, temperature=0, num_samples=3))
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_l, want_l, rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_graph_replay_equals_eager_static_step_bf16():
    model = make("cuda", pos_emb="rope", n_head=4, n_kv_head=2).to(torch.bfloat16)
    idx = torch.randint(0, 48, (1, 5), generator=torch.Generator().manual_seed(7)).cuda()
    eager = run(StaticDecoder(model, 4, cuda_graph=False).decode(idx, 40, temperature=1.0, seed=1, num_samples=4))
    graph = run(StaticDecoder(model, 4).decode(idx, 40, temperature=1.0, seed=1, num_samples=4))
    assert torch.equal(graph[1], eager[1])
    torch.testing.assert_close(graph[0], eager[0])


@cuda
def test_cuda_graph_with_compile_matches_cached():
    model = make("cuda")
    idx = torch.randint(0, 48, (1, 5), generator=torch.Generator().manual_seed(8)).cuda()
    want = run(decode(model, idx, 2 * BLOCK, temperature=0))[1]
    dec = StaticDecoder(model, 1, compile=True)
    dec.verify()
    got = run(dec.decode(idx, 2 * BLOCK, temperature=0))[1]
    assert torch.equal(got, want)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", CONFIGS)
def test_cuda_graph_passes_its_self_check(name, dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs compute capability 8.0+")
    dec = StaticDecoder(make("cuda", **CONFIGS[name]).to(dtype), 3)
    assert dec.graph is not None
    dec.verify()
    assert dec.filled == 0 and dec.pos.item() == 0


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_graph_on_the_second_gpu():
    """The model on cuda:1 while cuda:0 is current: warm-up and capture must use cuda:1's own
    stream, or the graph records nothing and every replay does nothing."""
    model = make("cuda:1", pos_emb="rope", n_head=4, n_kv_head=2)
    idx = torch.randint(0, 48, (2, 5), generator=torch.Generator().manual_seed(9)).to("cuda:1")
    want_l, want_t = run(decode(model, idx, 2 * BLOCK, temperature=0.8, top_k=10, seed=1))
    with torch.cuda.device(0):
        dec = StaticDecoder(model, 2)
        assert torch.cuda.current_device() == 0                # capture left the current device alone
        dec.verify()
        got_l, got_t = run(dec.decode(idx, 2 * BLOCK, temperature=0.8, top_k=10, seed=1))
    assert got_l.device == torch.device("cuda", 1)
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_l, want_l, rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.parametrize("block_size", [1, 2])
def test_cuda_graph_for_tiny_block_sizes(block_size):
    """Warm-up before capture writes cache slot 0 only: writing past a 1- or 2-slot cache would
    be a device-side assert, which kills the CUDA context for the rest of the process."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=48, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).cuda().eval()
    idx = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    dec = StaticDecoder(model, 1)
    dec.verify()
    want = run(decode(model, idx, 6, temperature=1.0, seed=2))[1]
    assert torch.equal(run(dec.decode(idx, 6, temperature=1.0, seed=2))[1], want)


@cuda
@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=0.8, top_k=10, top_p=0.9, seed=0)],
                         ids=["greedy", "sampled"])
def test_cuda_decode_steps_never_sync(settings):
    """The GPU's own check of tests/test_gpu_invariants.py's traces: with sync debug mode set to
    "error", any op that waits for the GPU raises. Prefill and capture may sync; steps may not."""
    model = make("cuda", pos_emb="rope", n_head=4, n_kv_head=2)
    idx = torch.randint(0, 48, (2, 3), generator=torch.Generator().manual_seed(10)).cuda()
    dec = StaticDecoder(model, 4)
    for steps in (decode(model, idx, 8, num_samples=2, **settings),
                  dec.decode(idx, 8, num_samples=2, **settings)):
        next(steps)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                next(steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@cuda
def test_cuda_decoder_is_freed_on_del():
    def used_decoder():
        dec = StaticDecoder(make("cuda"), 2)
        dec.verify()
        return dec
    assert freed_at_once(used_decoder)
