"""Muon: orthogonalised updates, which parameters it may take, the batched step (same result as
one matrix at a time), resuming from its state_dict, its dtype rule and the compiled path."""

import io

import pytest
import torch

import training.muon
from model import GPT, GPTConfig
from training.muon import Muon, newton_schulz_dtype, orthogonalize


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_flattens_the_spectrum(shape, dtype):
    torch.manual_seed(0)
    # a badly conditioned matrix: singular values from 1e-3 to 1e2
    U, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    V, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    S = torch.logspace(-3, 2, k)
    G = U[:, :k] @ torch.diag(S) @ V[:, :k].T
    s = torch.linalg.svdvals(orthogonalize(G, dtype=dtype).float())
    assert s.max() < 1.3 and s[: k // 2].min() > 0.6  # the large half lands near 1
    assert s.max() / s[: k // 2].min() < 2.0          # was 1e5 / 10 before


def split(m):
    roles = m.parameters_by_role()
    return roles["matrices"], roles["embeddings"] + roles["head"] + roles["gains"]


@pytest.mark.parametrize("tie", [True, False])
def test_parameters_by_role(tie):
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True,
                      tie_embeddings=tie))
    roles = m.parameters_by_role()
    named = dict(m.named_parameters())
    ids = {role: {id(p) for p in ps} for role, ps in roles.items()}
    assert ids["embeddings"] == {id(named["wte.weight"]), id(named["wpe.weight"])}
    assert ids["head"] == (set() if tie else {id(named["lm_head.weight"])})
    assert all(p.dim() == 2 for p in roles["matrices"])
    assert len(roles["matrices"]) == 2 * 6                   # q, k, v, o, fc, proj per block
    assert all(p.dim() == 1 for p in roles["gains"])         # norm gains and biases
    every = [id(p) for ps in roles.values() for p in ps]
    assert sorted(every) == sorted(id(p) for p in m.parameters())  # each parameter exactly once
    with pytest.raises(ValueError, match="2-D"):
        Muon(roles["gains"])


def test_muon_trains():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    muon, adamw = split(m)
    opts = [Muon(muon, lr=0.02), torch.optim.AdamW(adamw, lr=3e-3)]
    x = torch.randint(0, 50, (8, 17))
    losses = []
    for _ in range(40):
        loss = m(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- the batched step: same-shape matrices orthogonalised together -------------------------

def test_batched_orthogonalize_equals_per_matrix():
    torch.manual_seed(0)
    # tall, wide and square groups; norms 1e-2..1e2 within a group, so one norm for the whole
    # batch instead of one per matrix would leave the small ones far from orthogonal
    for n, out, inp in [(3, 32, 32), (4, 64, 16), (3, 16, 64), (1, 24, 40)]:
        G = torch.randn(n, out, inp) * torch.logspace(-2, 2, n).view(n, 1, 1)
        batched = orthogonalize(G)
        assert batched.shape == (n, out, inp)
        one_by_one = torch.stack([orthogonalize(g) for g in G])
        torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-6)


def reference_step(groups, bufs):
    """Muon's step one matrix at a time, as it was before the batching; bufs: id -> momentum."""
    for g in groups:
        for p in g["params"]:
            if p.grad is None:
                continue
            buf = bufs.setdefault(id(p), torch.zeros_like(p))
            buf.mul_(g["momentum"]).add_(p.grad)
            update = p.grad.add(buf, alpha=g["momentum"]) if g["nesterov"] else buf
            update = orthogonalize(update)
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
            if g["weight_decay"]:
                p.mul_(1 - g["lr"] * g["weight_decay"])
            p.add_(update.to(p.dtype), alpha=-g["lr"] * scale)


SHAPES = [(32, 32), (32, 32), (32, 32), (64, 16), (64, 16), (16, 64), (24, 40)]


def mixed_groups():
    """Two param groups with different hyperparameters over mixed shapes: three square and two
    tall matrices in the first; one wide, one 24x40 and, last, a square one that never gets a
    gradient (so must not move) in the second."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g) for s in SHAPES + [(32, 32)]]
    return [dict(params=ps[:5], lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1),
            dict(params=ps[5:], lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.0)]


def clone_groups(groups):
    return [dict(g, params=[p.clone() for p in g["params"]]) for g in groups]


def set_grads(groups, step):
    """The same gradients for every copy of the groups at a given step; none for the last matrix."""
    g = torch.Generator().manual_seed(100 + step)
    ps = params_of(groups)
    for p in ps[:-1]:
        p.grad = torch.randn(p.shape, generator=g)
    ps[-1].grad = None


def params_of(groups):
    return [p for g in groups for p in g["params"]]


def test_muon_step_equals_per_matrix_reference():
    groups = mixed_groups()
    ref = clone_groups(groups)
    opt = Muon(groups)
    bufs = {}
    for step in range(4):
        set_grads(groups, step)
        set_grads(ref, step)
        opt.step()
        reference_step(ref, bufs)
    assert torch.equal(params_of(groups)[-1], params_of(mixed_groups())[-1])  # no gradient, no step
    for p, q in zip(params_of(groups), params_of(ref)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_state_dict_round_trip_resumes_identically():
    groups = mixed_groups()
    opt = Muon(groups)
    for step in range(2):
        set_grads(groups, step)
        opt.step()
    # a resumed run: the parameters and the optimizer's state_dict through torch.save, as in a checkpoint
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    resumed_groups = clone_groups(groups)
    # built with the default hyperparameters: lr, momentum, ... come back from the state_dict
    resumed = Muon([dict(params=g["params"]) for g in resumed_groups])
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    momenta = [s["momentum"] for s in resumed.state_dict()["state"].values()]
    assert len(momenta) == len(SHAPES) and all(m.abs().sum() > 0 for m in momenta)  # not the frozen one
    assert resumed.param_groups[1]["lr"] == 0.05 and not resumed.param_groups[1]["nesterov"]
    for step in range(2, 4):
        set_grads(groups, step)
        set_grads(resumed_groups, step)
        opt.step()
        resumed.step()
    for p, q in zip(params_of(groups), params_of(resumed_groups)):
        assert torch.equal(p, q)


# --- which dtype Newton-Schulz computes in ------------------------------------------------------

@pytest.mark.parametrize("device_type, cap, cpu, dtype", [
    ("cuda", (7, 5), None, torch.float32),   # T4: bf16 only emulated
    ("cuda", (7, 0), None, torch.float32),   # V100
    ("cuda", (8, 0), None, torch.bfloat16),  # A100
    ("cuda", (9, 0), None, torch.bfloat16),  # H100
    ("cpu", None, {"avx512_bf16": True}, torch.bfloat16),  # a CPU with bf16 units
    ("cpu", None, {"amx_bf16": True}, torch.bfloat16),
    ("cpu", None, {"avx2": True, "avx512_f": True}, torch.float32),  # one without
    ("mps", None, None, torch.float32),
])
def test_newton_schulz_dtype(device_type, cap, cpu, dtype):
    assert newton_schulz_dtype(device_type, cap, cpu) == dtype


def test_muon_and_orthogonalize_follow_the_dtype_rule(monkeypatch):
    """A CPU cannot pose as an A100, so fake the rule itself and check both use it."""
    G = torch.randn(16, 32)
    assert orthogonalize(G).dtype == newton_schulz_dtype("cpu", None)  # the rule on this CPU
    monkeypatch.setattr(training.muon, "newton_schulz_dtype", lambda device_type, cap: torch.bfloat16)
    assert orthogonalize(G).dtype == torch.bfloat16
    monkeypatch.setattr(training.muon, "newton_schulz_dtype", lambda device_type, cap: torch.float32)
    assert orthogonalize(G).dtype == torch.float32
    groups, ref = mixed_groups(), mixed_groups()
    set_grads(groups, 0)
    set_grads(ref, 0)
    Muon(groups).step()
    reference_step(ref, {})                                            # orthogonalize in bf16 too
    for p, q in zip(params_of(groups), params_of(ref)):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    fp32 = mixed_groups()
    set_grads(fp32, 0)
    monkeypatch.undo()
    Muon(fp32).step()
    assert not torch.allclose(params_of(fp32)[0], params_of(groups)[0], rtol=0, atol=1e-4)


# --- the compiled Newton-Schulz -------------------------------------------------------------

def test_compiled_newton_schulz_equals_eager():
    """compile_ns goes through torch.compile, one graph per matrix shape (dynamic=False), and
    steps exactly as eager. A recording backend that runs the captured graph as it is keeps
    this quick; aot_eager checks the same through AOTAutograd's decomposed graph."""
    torch._dynamo.reset()
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(tuple(example_inputs[0].shape))
        return gm.forward

    for backend in (recording, "aot_eager"):
        compiled, eager = mixed_groups(), mixed_groups()
        opt_c, opt_e = Muon(compiled, compile_ns=backend), Muon(eager)
        for step in range(2):
            for groups, opt in ((compiled, opt_c), (eager, opt_e)):
                set_grads(groups, step)
                opt.step()
        for p, q in zip(params_of(compiled), params_of(eager)):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        torch._dynamo.reset()
    # (3, 32, 32), (2, 64, 16) in one group, (1, 16, 64), (1, 24, 40) in the other: four
    # batch shapes, each compiled once at the first step and reused at the second
    assert sorted(graphs) == sorted([(3, 32, 32), (2, 64, 16), (1, 16, 64), (1, 24, 40)])
