"""Muon: momentum, then orthogonalise the update of each weight matrix.

For a hidden matrix W (out, in), plain SGD-momentum steps along the momentum M, whose few
largest singular directions dominate. Muon replaces M by the nearest semi-orthogonal matrix
(U V^T from M = U S V^T): every direction gets the same step size, so rarely-used directions
learn as fast as common ones. U V^T is approximated by five Newton-Schulz iterations, which
are only matmuls (K. Jordan et al., 2024, "Muon: an optimizer for hidden layers").

Only for the blocks' matrices (GPT.parameters_by_role()["matrices"]); embeddings, the head and
gains stay with AdamW: embeddings are lookups, not linear maps of a hidden state, and the head's
rows are per-token scores, so orthogonalising their updates does not fit them.

Why not torch.optim.Muon (PyTorch >= 2.9)? It runs Newton-Schulz in bfloat16 always, which is
fast on a GPU but ~20x slower than float32 on a CPU without bf16 units; here the iteration runs
in bf16 on CUDA and float32 elsewhere, and the code works on every torch this project supports.
"""

import torch


def orthogonalize(G, steps: int = 5, eps: float = 1e-7):
    """Approximately U V^T for G = U S V^T, G (out, in). A quintic Newton-Schulz iteration
    whose coefficients (3.4445, -4.7750, 2.0315) push every singular value towards ~1 fast;
    it lands in roughly [0.7, 1.2] rather than exactly 1, which trains just as well."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T                          # iterate on the wide side: X X^T is the smaller matrix
    X = X / (X.norm() + eps)             # singular values <= 1, where the iteration converges
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D weight matrices, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"]
                buf.mul_(mu).add_(p.grad)
                update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
                update = orthogonalize(update)
                # U V^T has entries of size ~1/sqrt(in); scale tall matrices up so every layer's
                # update has about the same RMS (Keller Jordan's original scaling)
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update.to(p.dtype), alpha=-lr * scale)
