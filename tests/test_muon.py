"""Muon: orthogonalised updates, and which parameters it may take."""

import pytest
import torch

from model import GPT, GPTConfig
from model.muon import Muon, orthogonalize, split_params_for_muon


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


def test_split_params_for_muon():
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True,
                      tie_embeddings=False))
    muon, adamw = split_params_for_muon(m)
    assert all(p.dim() == 2 for p in muon)
    ids = {id(p) for p in muon}
    for name in ("wte.weight", "wpe.weight", "lm_head.weight"):
        assert id(dict(m.named_parameters())[name]) not in ids  # no embedding or head to Muon
    assert not any(p.dim() < 2 for p in muon)                 # no gain or bias to Muon
    assert len(muon) == 2 * 6                                 # q, k, v, o, fc, proj per block
    assert len(muon) + len(adamw) == len(list(m.parameters()))
    with pytest.raises(ValueError, match="2-D"):
        Muon(adamw)


def test_muon_trains():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    muon, adamw = split_params_for_muon(m)
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
