"""Numbers read off a model's attention weights (GPT.attention_maps: (B, nh, T, T) per layer).

    entropy(maps)         how spread each query's weights are, in nats: ln(k) for k keys weighted
                          evenly, 0 for a one-hot row
    uniform_entropy(T)    the same for rows that weight every visible key evenly (row i: ln(i + 1))
    head_divergence(w)    how different a layer's heads are: the mean Jensen-Shannon divergence
                          between two heads' rows for the same query, over all head pairs, in bits
                          (0: the same map; 1: no key in common)
"""

import math

import torch


def entropy(maps: list) -> float:
    """The mean entropy of every attention row, over layers, heads, queries and the batch."""
    return torch.stack([-torch.special.xlogy(w, w).sum(-1).mean() for w in maps]).mean().item()


def uniform_entropy(T: int) -> float:
    return sum(math.log(i + 1) for i in range(T)) / T


def head_divergence(w) -> float:
    """w: one layer's weights (B, nh, T, T_k). The mean JS divergence over every pair of heads."""
    nh = w.size(1)
    if nh < 2:
        return 0.0
    total = []
    for a in range(nh):
        for b in range(a + 1, nh):
            p, q = w[:, a], w[:, b]                               # (B, T, T_k) each
            m = (p + q) / 2
            kl = lambda x: (torch.special.xlogy(x, x) - torch.special.xlogy(x, m)).sum(-1)  # noqa: E731
            total.append(((kl(p) + kl(q)) / (2 * math.log(2))).mean())
    return torch.stack(total).mean().item()
