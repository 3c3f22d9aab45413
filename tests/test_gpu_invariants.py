"""What the GPU decode code relies on, checked on the CPU (CI has no GPU, and neither do we).

The fast path (model/fast_decode.py) and sampling (model/generate.py) are written for a GPU but
never run on one here, so every property they rely on gets a test that runs anywhere:
  - no host sync per token: a trace of every aten op in the decode loops finds none that reads
    a value back to the host (on a GPU that read would stall the queue every token);
  - the static step compiles as one graph (fullgraph, nothing data-dependent) and matches eager;
  - every phase (training, evaluation, prefill, decode) runs SDPA with model/kernels.py's
    chosen kernels: no cuDNN;
  - bf16: the static step agrees with the plain cached step, and greedy picks match;
  - verify() catches a replay that raises, writes nothing, writes wrong logits or moves the
    position wrongly (tests/test_sample.py checks that sample.py then falls back);
  - capture: with a stand-in torch.cuda that models where work goes, a decoder for cuda:1 warms
    up and captures on cuda:1's stream, so its graph records the step;
  - del frees a decoder at once; block_size 1 and 2 build, warm up and decode.
The same properties on a real GPU: the CUDA tests at the bottom of tests/test_fast_decode.py.
"""

import contextlib
import copy
import gc
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo import lookup_backend
from torch.utils._python_dispatch import TorchDispatchMode

from model import GPT, GPTConfig
from model.fast_decode import DecodeCheckError, StaticDecoder, decode_static
from model.generate import decode

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BLOCK = 16
CONFIGS = {
    "mha-learned": dict(n_head=2),
    "gqa-rope": dict(n_head=4, n_kv_head=2, pos_emb="rope"),
    "speedrun-options": dict(n_head=2, pos_emb="rope", norm="rmsnorm", embed_norm=True, qk_norm=True,
                             mlp_act="relu2", tie_embeddings=False, logit_softcap=30.0),
    "window-rope": dict(n_head=4, n_kv_head=2, pos_emb="rope", attn_window=4),  # a ring of 4 slots
}
SAMPLED = dict(temperature=0.8, top_k=10, top_p=0.9, seed=0)


def make(block_size=BLOCK, **kw):
    """A small random model with scaled-up weights (peaked logits, so greedy picks are clear)."""
    torch.manual_seed(0)
    kw = {**CONFIGS["mha-learned"], **kw}
    model = GPT(GPTConfig(vocab_size=48, block_size=block_size, n_layer=2, n_embd=32, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model.eval()


def prompt(rows, length, seed=1):
    return torch.randint(0, 48, (rows, length), generator=torch.Generator().manual_seed(seed))


def tokens(steps):
    """Collect a decode generator's tokens: (N, new)."""
    return torch.stack([t for _, t in steps], dim=1)


@pytest.fixture
def fresh_dynamo():
    """Compiled-step tests start from an empty compile cache and leave one behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def compile_with(monkeypatch, fresh_dynamo):
    """compile_with(backend): torch.compile, as StaticDecoder calls it (fullgraph=True,
    dynamic=False), but through `backend`: no C++ compiler needed, seconds instead of minutes."""
    real = torch.compile

    def use(backend):
        # options are Inductor's (StaticDecoder passes some on a CPU), not the backend's
        monkeypatch.setattr(torch, "compile", lambda fn, options=None, **kw: real(fn, backend=backend, **kw))
    return use


# --- no host sync per token ---------------------------------------------------------------------

# aten ops that read a tensor's value back to the host, which on a GPU waits for every queued
# kernel: scalar reads, comparisons that return a Python bool, ops whose output *shape* depends
# on the values (the host must know it to allocate), and multinomial (checks probs with .item())
HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal",
              "aten::allclose", "aten::nonzero", "aten::masked_select", "aten::unique_consecutive",
              "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::bincount",
              "aten::multinomial", "aten::repeat_interleave.Tensor",
              "aten::repeat_interleave.self_Tensor"}
BOOL_INDEXED = {"aten::index.Tensor", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class HostReads(TorchDispatchMode):
    """Records the name of every aten op run inside it; .reads keeps those that read the host,
    including indexing with a boolean mask (x[mask]: its result's size depends on the mask)."""

    def __init__(self):
        super().__init__()
        self.ops, self.reads = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        self.ops.append(name)
        if name in HOST_READS or name.split(".")[0] in HOST_READS:
            self.reads.append(name)
        elif name in BOOL_INDEXED and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                          for i in args[1] if i is not None):
            self.reads.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads(monkeypatch):
    """A context manager tracing aten ops. On a CPU, .tolist() and .numpy() read memory without
    any aten op, so they are recorded by wrapping those two methods for the trace's duration."""
    @contextlib.contextmanager
    def trace():
        mode = HostReads()
        for method in ("tolist", "numpy"):
            real = getattr(torch.Tensor, method)

            def wrapped(self, *a, _real=real, _name=method, **kw):
                mode.reads.append(f"Tensor.{_name}()")
                return _real(self, *a, **kw)
            monkeypatch.setattr(torch.Tensor, method, wrapped)
        try:
            with mode:
                yield mode
        finally:
            monkeypatch.undo()
    return trace


SETTINGS = {"greedy": dict(temperature=0), "sampled": SAMPLED}


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("name", ["mha-learned", "gqa-rope", "window-rope"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_plain_decode_steps_never_read_the_host(use_cache, name, settings, host_reads):
    # 3 prompt + 8 new tokens fit the 16-token window: every traced step is a one-token step
    steps = decode(make(**CONFIGS[name]), prompt(2, 3), 8, num_samples=2, use_cache=use_cache,
                   **SETTINGS[settings])
    next(steps)                                    # prefill and the first pick: may read the host
    with host_reads() as trace:
        for _ in range(5):
            next(steps)
    assert "aten::mm" in trace.ops and "aten::argmax" in trace.ops   # the steps were traced
    assert trace.reads == []


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("name", CONFIGS)
def test_static_decode_step_and_sampling_never_read_the_host(name, settings, host_reads):
    """What decode() does per token on a GPU: copy the token in, take the step (there: replay
    the graph), clone the logits, sample. Here the same step runs eagerly, op by op."""
    dec = StaticDecoder(make(**CONFIGS[name]), 4)
    steps = dec.decode(prompt(2, 3), 8, num_samples=2, **SETTINGS[settings])
    next(steps)
    with host_reads() as trace:
        for _ in range(5):
            next(steps)
    assert "aten::index_put_" in trace.ops and "aten::argmax" in trace.ops
    assert trace.reads == []


@pytest.mark.parametrize("name", ["mha-learned", "gqa-rope"])
def test_the_speculative_check_step_and_its_rewind_never_read_the_host(name, host_reads):
    """What model/speculative.py asks of the static step per forward, on a GPU a graph replay:
    copy the guesses in, take the step, move the position back. (Its verdicts are read back
    after, once per forward, by design.)"""
    dec = StaticDecoder(make(**CONFIGS[name]), 1, tokens=4)
    dec.prefill(prompt(1, 3))
    guesses = torch.tensor([[5, 6, 7, 8]])
    dec.check(guesses)
    with host_reads() as trace:
        dec.rewind(4)
        dec.check(guesses)
    assert "aten::index_put_" in trace.ops and "aten::fill_.Scalar" in trace.ops
    assert trace.reads == []


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("path", ["rolling cache", "static ring"])
def test_rolling_decode_past_block_size_never_reads_the_host(path, settings, host_reads):
    """A ring decodes for ever: the steps past block_size (RoPE's angles computed from the
    position, the slot pos % W, the mask of which slot holds what) read nothing back either."""
    model = make(**CONFIGS["window-rope"])
    kw = dict(num_samples=2, **SETTINGS[settings])
    steps = (decode(model, prompt(2, 3), 40, **kw) if path == "rolling cache"
             else StaticDecoder(model, 4).decode(prompt(2, 3), 40, **kw))
    for _ in range(2 * BLOCK):                     # to position 3 + 32, twice past block_size
        next(steps)
    with host_reads() as trace:
        for _ in range(5):
            next(steps)
    assert "aten::cos" in trace.ops and "aten::argmax" in trace.ops
    assert trace.reads == []


def test_the_trace_sees_host_reads(host_reads):
    """The tracer itself: each way of reading the host is caught."""
    x = torch.tensor([0.2, 0.5, 0.3])
    with host_reads() as trace:
        x.sum().item()                 # .item(), int(), float(), bool(): one scalar read
        bool(x.max() > 0.4)
        x[x > 0.25]                    # boolean-mask indexing: the result's size is data
        torch.nonzero(x > 0.25)
        torch.multinomial(x, 1)
        x.tolist()
    assert trace.reads == ["aten::_local_scalar_dense", "aten::_local_scalar_dense",
                           "aten::index.Tensor with a boolean mask", "aten::nonzero",
                           "aten::multinomial", "Tensor.tolist()"]


# --- attention kernels chosen on purpose, in every phase -----------------------------------------

def test_every_phase_runs_sdpa_with_its_chosen_kernels(monkeypatch):
    """SDPA picks its kernel from global flags when it is called (on a GPU; on this CPU there is
    no cuDNN, but the flags are the same): record them at each call, in training (forward and
    backward), evaluation, prefill, and the cached and static decode steps."""
    real_sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []
    phase = [None]

    def recording_sdpa(q, *args, **kwargs):
        name = phase[0] if phase[0] != "decoding" else ("decode" if q.size(-2) == 1 else "prefill")
        seen.append((name, torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                     torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
        return real_sdpa(q, *args, **kwargs)

    model = make(**CONFIGS["gqa-rope"])
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    idx = prompt(2, BLOCK)
    phase[0] = "train"
    model.train()
    model(idx, idx)[1].backward()
    phase[0] = "eval"
    model.eval()
    with torch.no_grad():
        model(idx, idx)
    phase[0] = "decoding"
    tokens(decode(model, prompt(2, 3), 4, **SAMPLED))
    tokens(StaticDecoder(model, 2).decode(prompt(2, 3), 4, **SAMPLED))
    assert {name for name, *_ in seen} == {"train", "eval", "prefill", "decode"}
    allowed = (False, True, True, True)                       # cuDNN out; flash, efficient, math in
    assert [s for s in seen if tuple(s[1:]) != allowed] == []
    assert torch.backends.cuda.cudnn_sdp_enabled()            # and the flags are restored after


def test_the_kernel_choice_compiles_into_the_graph():
    """train.py compiles the whole model: entering the phase's sdpa_kernel must not break the
    graph (fullgraph=True raises if it does), forward and backward."""
    model = make(**CONFIGS["gqa-rope"]).train()
    idx = prompt(2, BLOCK)
    want = model(idx, idx)[1]
    got = torch.compile(model, fullgraph=True, backend="eager")(idx, idx)[1]
    got.backward()
    assert torch.allclose(got, want)


# --- the step compiles whole -------------------------------------------------------------------

@pytest.mark.parametrize("rows", [1, 2], ids=["1 row", "2 rows"])
@pytest.mark.parametrize("name", CONFIGS)
def test_static_step_compiles_as_one_graph_and_matches_eager(name, rows, compile_with):
    """Compiled on a CPU, one row runs model/matvec.py's multiply-and-sum, more rows the layers'
    own matmuls; without a CUDA graph the step attends over the filled slots, a length that
    changes every step and must not recompile."""
    graphs = []

    def one_graph_each(gm, example_inputs):       # counts the graphs dynamo hands over
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)  # functionalised, like inductor sees it

    compile_with(one_graph_each)
    model = make(**CONFIGS[name])
    compiled, eager = StaticDecoder(model, rows, compile=True), StaticDecoder(model, rows)
    idx = prompt(rows, 3)
    tok = compiled.prefill(idx).argmax(-1)
    eager.prefill(idx)
    # positions 3..8 (a ring: 3..22, wrapping 5 times and past block_size): pos is a tensor,
    # so no position recompiles
    for _ in range(20 if compiled.ring else 6):
        want = eager.step(tok).clone()
        got = compiled.step(tok)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        tok = want.argmax(-1)
    # one graph: fullgraph=True already raises on a graph break; this also rules out recompiling
    assert len(graphs) == 1
    compiled.verify()


# --- bf16 ----------------------------------------------------------------------------------------

PANGRAM = "the quick brown fox jumps over the lazy dog. " * 8


@pytest.fixture(scope="module")
def pangram_model():
    """A GQA + RoPE model that has memorised one sentence (150 AdamW steps, ~2 s): each next
    character is a clear choice, so greedy picks have wide margins even in bf16."""
    vocab = sorted(set(PANGRAM))
    data = torch.tensor([vocab.index(c) for c in PANGRAM])
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(vocab), block_size=BLOCK, n_layer=2, n_head=4, n_kv_head=2,
                          n_embd=32, pos_emb="rope"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(150):
            ix = torch.randint(len(data) - BLOCK - 1, (16,), generator=g)
            x = torch.stack([data[i:i + BLOCK] for i in ix])
            y = torch.stack([data[i + 1:i + BLOCK + 1] for i in ix])
            loss = model(x, y)[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), vocab


def test_bf16_static_step_agrees_with_the_cached_step(pangram_model):
    model, vocab = pangram_model
    model = copy.deepcopy(model).to(torch.bfloat16)
    idx = torch.tensor([[vocab.index(c) for c in p] for p in ("fox", "laz")])
    # 24 new tokens: past the 16-token window, so the static re-prefill is in it too
    want = list(decode(model, idx, 24, temperature=0))
    got = list(decode_static(model, idx, 24, temperature=0))
    want_l = torch.stack([l for l, _ in want]).float()                  # (24, 2, V)
    got_l = torch.stack([l for l, _ in got]).float()
    assert got_l.dtype == want_l.dtype == torch.float32 and got[0][0].dtype == torch.bfloat16
    # Tolerance: bf16 keeps 8 significant bits, so a logit near the largest one (the scale) is
    # stored to within 2^-8 of it; the static step adds the same numbers in another order (fused
    # q|k|v matmul, attention over all 16 slots with a mask instead of the filled ones), so each
    # rounding may land a step away. 4 such steps: 2^-5 of the scale (measured: under 2^-7).
    tol = 2 ** -5 * want_l.abs().max()
    assert (got_l - want_l).abs().max() <= tol
    # Greedy picks can differ only where the top two logits are closer than 2 * tol (each may
    # move by tol). This model is sure of every next character, far from that: check it, so a
    # failure below means a real difference, not a near-tie that rounding broke.
    top2 = want_l.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 2 * tol
    assert torch.equal(tokens(got), tokens(want))
    assert "".join(vocab[t] for t in tokens(want)[0].tolist()).startswith(" jumps over the lazy dog")


# --- verify() ------------------------------------------------------------------------------------

def _raises(dec):
    raise RuntimeError("boom")


def _twice(dec):
    dec._run(dec._slots())
    dec._run(dec._slots())


def _wrong_logit(dec):
    dec._run(dec._slots())
    dec.logits[..., 0] += 1.0    # one logit per row a little off: the rest is right


def _a_little_off(dec):
    dec._run(dec._slots())
    dec.logits[..., 0] += 1e-5 * dec.logits.abs().max()  # a graph of the eager step is bit for bit


def _position_kept(dec):
    dec._run(dec._slots())
    dec.pos.sub_(1)


FAULTS = {
    "raises": (_raises, "the step raised RuntimeError: boom"),
    "writes nothing": (lambda dec: None, "off by nan .* and moves the position by 0"),
    "one wrong logit": (_wrong_logit, "off by 1 from the eager step's"),
    "one logit a little off": (_a_little_off, "off by .* from the eager step's at position 0 "),
    "position kept": (_position_kept, "moves the position by 0, not by 1"),
    "position moved twice": (_twice, "logits off by .* and moves the position by 2, not by 1"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_verify_catches_a_broken_replay(fault, monkeypatch):
    replay, message = FAULTS[fault]
    monkeypatch.setattr(StaticDecoder, "_replay", replay)
    dec = StaticDecoder(make(n_head=4, n_kv_head=2), 2)
    with pytest.raises(DecodeCheckError, match=message):
        dec.verify()


def test_verify_catches_an_empty_cuda_graph():
    """What capture on the wrong device gives: a graph that replays nothing. The known state
    (nan logits, the position reset) means it cannot pass by leaving the last results in place."""
    dec = StaticDecoder(make(), 2)
    dec.graph = SimpleNamespace(replay=lambda: None)
    with pytest.raises(DecodeCheckError, match="the CUDA graph gives logits off by nan"):
        dec.verify()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_verify_passes_and_leaves_the_decoder_ready(compiled, compile_with):
    compile_with("eager")
    model = make(n_head=4, n_kv_head=2, pos_emb="rope")
    dec = StaticDecoder(model, 2, compile=compiled)
    dec.verify()
    assert dec.filled == 0 and dec.pos.item() == 0
    idx = prompt(1, 4)
    kw = dict(SAMPLED, num_samples=2)
    assert torch.equal(tokens(dec.decode(idx, 2 * BLOCK, **kw)), tokens(decode(model, idx, 2 * BLOCK, **kw)))


# --- capture, with a stand-in torch.cuda --------------------------------------------------------

class FakeStream:
    def __init__(self, device, kind):
        self.device, self.kind = device, kind

    def wait_stream(self, other):
        pass


class FakeGraph:
    def __init__(self):
        self.kernels = []

    def replay(self):
        for kernel in self.kernels:
            kernel()


class FakeCuda:
    """The parts of torch.cuda that StaticDecoder._capture uses, modelling where work goes on a
    machine with several GPUs: each device has a current stream, and one device is current.
    The step's tensors live on `target` (really on the CPU). A step run while torch.cuda.graph
    captures is recorded only if the capture stream is target's current stream and capture was
    begun with target current; otherwise it runs at once and the graph stays empty, as on a GPU.
    Without stream=, torch.cuda.graph captures on its own side stream, made once per process on
    the device current at its first use, like torch's (graph.default_capture_stream)."""

    def __init__(self, target):
        self.target = target
        self.current = torch.device("cuda", 0)
        self.streams = {}                 # device -> its current stream
        self.capturing = None             # (graph, capture stream, device current at capture)
        self.default_capture_stream = None
        self.warm_up = []                 # (stream, current device) of each step run at once

    # -- the torch.cuda API --
    @contextlib.contextmanager
    def device(self, device):
        before, self.current = self.current, torch.device(device)
        try:
            yield
        finally:
            self.current = before

    def Stream(self, device=None):  # noqa: N802 - torch.cuda's name
        return FakeStream(torch.device(device) if device is not None else self.current, "side")

    def current_stream(self, device=None):
        device = torch.device(device) if device is not None else self.current
        return self.streams.setdefault(device, FakeStream(device, "default"))

    @contextlib.contextmanager
    def stream(self, s):
        before = self.current_stream(s.device)
        self.streams[s.device] = s
        try:
            yield
        finally:
            self.streams[s.device] = before

    def CUDAGraph(self):  # noqa: N802
        return FakeGraph()

    @contextlib.contextmanager
    def graph(self, g, pool=None, stream=None, **kwargs):
        if stream is None and self.default_capture_stream is None:
            self.default_capture_stream = FakeStream(self.current, "side")
        s = stream if stream is not None else self.default_capture_stream
        with self.stream(s):
            self.capturing = (g, s, self.current)
            try:
                yield
            finally:
                self.capturing = None

    # -- the step, as the fake GPU takes it --
    def run_step(self, dec, real_run, slots):
        stream = self.current_stream(self.target)          # where the step's kernels go
        if self.capturing is not None:
            g, s, began_on = self.capturing
            if stream is s and began_on == self.target:
                g.kernels.append(lambda: real_run(dec, slots))  # recorded, not run
                return
        self.warm_up.append((stream, self.current))
        real_run(dec, slots)


@pytest.mark.parametrize("block_size", [1, 2, BLOCK])
def test_capture_records_the_step_on_the_models_own_gpu(block_size, monkeypatch):
    model = make(block_size=block_size, n_head=4, n_kv_head=2, pos_emb="rope")
    dec = StaticDecoder(model, 2, cuda_graph=False)
    fake = FakeCuda(torch.device("cuda", 1))               # the model on the second GPU
    fake.default_capture_stream = FakeStream(torch.device("cuda", 0), "side")  # a capture ran on cuda:0
    for name in ("device", "Stream", "current_stream", "stream", "CUDAGraph", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    real_run = StaticDecoder._run
    monkeypatch.setattr(StaticDecoder, "_run", lambda self, slots, dynamic=False: fake.run_step(self, real_run, slots))
    dec.device = fake.target
    dec._capture()                                         # warm-up: any block_size, no IndexError
    dec.device = torch.device("cpu")                       # where the tensors really are
    assert fake.current == torch.device("cuda", 0)         # the current device is restored
    assert len(dec.graph.kernels) == 1, "the graph is empty: the step ran at once during capture"
    # before it, the warm-up: on a side stream of cuda:1, with cuda:1 current
    assert [(s.device, s.kind, cur) for s, cur in fake.warm_up] == [(fake.target, "side", fake.target)] * 3
    dec.verify()                                           # the replay is the step
    idx = prompt(2, 1)
    want = tokens(decode(model, idx, 2 * block_size + 3, temperature=0))
    assert torch.equal(tokens(dec.decode(idx, 2 * block_size + 3, temperature=0)), want)


# --- lifetime, tiny windows ----------------------------------------------------------------------

@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_del_frees_the_decoder_at_once(compiled, compile_with):
    """No reference cycle: the cache (on a GPU also the graph's memory pool) goes with the last
    reference, not whenever the cyclic garbage collector next runs (here: never)."""
    compile_with("eager")

    def used_decoder():
        dec = StaticDecoder(make(), 2, compile=compiled)
        dec.verify()
        list(dec.decode(prompt(1, 3), 5, num_samples=2, **SAMPLED))
        return dec
    assert freed_at_once(used_decoder)


def freed_at_once(build) -> bool:
    """build() -> a decoder, then dropped: does its cache go with that last reference, the
    cyclic garbage collector held off? (tests/test_fast_decode.py's CUDA test uses it too)"""
    dec = build()
    cache = weakref.ref(dec.cache.k)
    gc.disable()
    try:
        del dec
        return cache() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("block_size", [1, 2])
def test_tiny_block_sizes_warm_up_verify_and_decode(block_size):
    model = make(block_size=block_size, n_head=4, n_kv_head=2, pos_emb="rope")
    dec = StaticDecoder(model, 2)
    dec._warm_up()          # what capture runs first on a GPU: it must stay inside the cache
    dec.verify()
    idx = prompt(2, 2)      # longer than block_size 1: cut to the window
    kw = dict(temperature=1.0, top_k=20, seed=3)
    want = tokens(decode(model, idx, 7, **kw))
    assert torch.equal(tokens(decode(model, idx, 7, use_cache=False, **kw)), want)
    assert torch.equal(tokens(dec.decode(idx, 7, **kw)), want)


def test_every_test_that_needs_cuda_carries_the_cuda_mark():
    """`pytest -m cuda` (what bench/gpu_check.py runs) selects by the mark: a test that skips
    itself for want of a GPU but has no `cuda` mark would never run there. Read from the source:
    each skipif is judged on a machine without a GPU and on one with eight."""
    import ast
    from pathlib import Path

    def machine(gpus):
        cuda = SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus,
                               get_device_capability=lambda *a: (9, 0))
        return {"torch": SimpleNamespace(cuda=cuda)}

    needs, unmarked = [], []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            marks = [ast.unparse(d) for d in node.decorator_list]
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.skipif" and d.args:
                    try:
                        if eval(ast.unparse(d.args[0]), machine(0)) and not eval(ast.unparse(d.args[0]), machine(8)):
                            needs.append(node.name)
                            if not {"cuda", "pytest.mark.cuda"} & set(marks):
                                unmarked.append(f"{path.name}::{node.name}")
                    except (NameError, AttributeError):  # a skipif about something else
                        pass
    assert "test_cuda_graph_on_the_second_gpu" in needs
    assert unmarked == []
