"""Muon: orthogonalised updates, and which parameters it may take."""

import pytest
import torch

from model import GPT, GPTConfig
from training.muon import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonalize_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    # a badly conditioned matrix: singular values from 1e-3 to 1e2
    U, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    V, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    S = torch.logspace(-3, 2, k)
    G = U[:, :k] @ torch.diag(S) @ V[:, :k].T
    s = torch.linalg.svdvals(orthogonalize(G))
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
