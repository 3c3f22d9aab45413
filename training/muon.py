"""Muon: momentum, then orthogonalise the update of each weight matrix.

For a hidden matrix W (out, in), plain SGD-momentum steps along the momentum M, whose few
largest singular directions dominate. Muon replaces M by the nearest semi-orthogonal matrix
(U V^T from M = U S V^T): every direction gets the same step size, so rarely-used directions
learn as fast as common ones. U V^T is approximated by five Newton-Schulz iterations, which
are only matmuls (K. Jordan et al., 2024, "Muon: an optimizer for hidden layers").

Only for the blocks' matrices (GPT.parameters_by_role()["matrices"]); embeddings, the head and
gains stay with AdamW: embeddings are lookups, not linear maps of a hidden state, and the head's
rows are per-token scores, so orthogonalising their updates does not fit them.

Same-shape matrices are orthogonalised together, as one batch (n, out, in): a GPT has only three
shapes (q/k/v/o, fc, proj), so a step runs Newton-Schulz three times, batched, instead of once per
matrix. On a GPU that is what counts: Muon's cost there is its number of small kernel launches,
not its arithmetic (docs/speedrun.md).

Why not torch.optim.Muon (PyTorch >= 2.9)? It runs Newton-Schulz in bfloat16 always, which is
fast where the hardware computes bf16 but slower than float32 where it only emulates it; here the
iteration runs in bf16 only where the hardware computes it (newton_schulz_dtype), and the code
works on every torch this project supports.
"""

from collections import defaultdict

import torch

from common.device import capability, native_bf16


def newton_schulz_dtype(device_type: str, cap: tuple[int, int] | None, cpu: dict | None = None) -> torch.dtype:
    """bf16 where the hardware computes it natively (a GPU of compute capability 8.0+, a CPU with
    AVX512-BF16 or AMX: common/device.py), float32 elsewhere, where bf16 is only emulated and
    slower. The iteration tolerates bf16's rounding: it only has to land singular values near 1."""
    return torch.bfloat16 if native_bf16(device_type, cap, cpu) else torch.float32


def orthogonalize(G, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None):
    """Approximately U V^T for G = U S V^T, G (out, in), or a batch of same-shape matrices
    (n, out, in), each orthogonalised on its own. A quintic Newton-Schulz iteration whose
    coefficients (3.4445, -4.7750, 2.0315) push every singular value towards ~1 fast; it lands
    in roughly [0.7, 1.2] rather than exactly 1, which trains just as well.
    dtype: what the iteration computes in; by default newton_schulz_dtype's rule for G's device."""
    a, b, c = 3.4445, -4.7750, 2.0315
    if dtype is None:
        dtype = newton_schulz_dtype(G.device.type, capability(G.device))
    X = G.to(dtype)
    one = X.dim() == 2
    if one:
        X = X.unsqueeze(0)               # a batch of one: (1, out, in)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT                         # iterate on the wide side: X X^T is the smaller matrix
    # each matrix divided by its own Frobenius norm: singular values <= 1, where it converges
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        # X <- a X + (b A + c A^2) X, with A = X X^T. baddbmm(C, P, Q, beta, alpha) computes
        # beta * C + alpha * P @ Q in one call: on a CPU this step is compute-bound, and the
        # scaling and the sums folded into the matmuls cost no extra passes over memory
        A = X @ X.mT                                  # (n, out, out) with out <= in
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)   # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)            # a X + B X
    X = X.mT if tall else X
    return X[0] if one else X


class Muon(torch.optim.Optimizer):
    """compile_ns: run the batched Newton-Schulz through torch.compile (dynamic=False: one graph
    per matrix shape, three for a GPT; more than 8 shapes would hit dynamo's recompile limit and
    fall back to eager), so Inductor fuses each iteration's elementwise ops. It costs a compile at
    the first step, so it pays only on long runs (bench/bench_muon.py --compile measures both;
    docs/speedrun.md). True means Inductor; a string or callable names another torch.compile
    backend (the tests use cheap ones)."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                 compile_ns=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D weight matrices, got shape {tuple(p.shape)}")
        self._orthogonalize = orthogonalize
        if compile_ns:
            backend = "inductor" if compile_ns is True else compile_ns
            self._orthogonalize = torch.compile(orthogonalize, dynamic=False, backend=backend)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum" not in self.state[p]:
                    self.state[p]["momentum"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum"] for p in params]
            grads = [p.grad for p in params]
            # per matrix, as buf.mul_(mu).add_(grad); the _foreach_ ops do each over the whole
            # list, in one fused kernel per op on CUDA (and a plain loop on a CPU)
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs

            same_shape = defaultdict(list)   # (shape, device, dtype) -> [(param, update)]
            for p, u in zip(params, updates):
                same_shape[p.shape, p.device, p.dtype].append((p, u))
            for (shape, device, dtype), pairs in same_shape.items():
                ps = [p for p, _ in pairs]
                ns_dtype = newton_schulz_dtype(device.type, capability(device))
                O = self._orthogonalize(torch.stack([u for _, u in pairs]), dtype=ns_dtype)  # (n, out, in)
                # U V^T has entries of size ~1/sqrt(in); scale tall matrices up so every layer's
                # update has about the same RMS (Keller Jordan's original scaling)
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                if wd:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                torch._foreach_add_(ps, list(O.to(dtype).unbind(0)), alpha=-lr * scale)
