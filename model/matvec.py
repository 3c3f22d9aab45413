"""One-row linear layers as a multiply and a sum, for the compiled decode step on a CPU.

Decoding one sequence multiplies a single row x (1, in) by every weight matrix, so its time is
the weights' bytes over the memory bandwidth. As a matmul, torch runs that product on a CPU as a
GEMV that reads the weights well below the bandwidth. Written as (x * W).sum(-1), torch.compile's
Inductor makes it one vectorized loop over W's rows, shared by every core, that streams W once;
int8 weights are widened inside that loop, so no float copy of W is ever made. docs/sampling.md
has the figures.

Eagerly the same expression would build the whole product x * W in memory, so outside
torch.compile one row is the plain matmul of the same numbers (int8 weights widened to the
activations' dtype, not torch's int8 kernel, which rounds activations to bf16): the eager step
that verify() checks the compiled one against. More than one row runs the layer's own forward.
"""

import copy
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantize import Int8Linear


class MatVec(nn.Module):
    """Wraps an nn.Linear or Int8Linear (sharing its tensors): same function, one row computed
    as a multiply and a sum when compiled."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):                                                  # (..., in)
        layer = self.layer
        if x.numel() != x.size(-1):                                        # more than one row
            return layer(x)
        w = layer.weight.to(x.dtype)                                       # (out, in); int8 widened
        if torch.compiler.is_compiling():
            y = (x.unsqueeze(-2) * w).sum(-1)                              # (..., 1, in) * (out, in) -> (..., out)
        else:
            y = F.linear(x, w)                                             # the same, eagerly
        if isinstance(layer, Int8Linear):
            y = y * layer.scales                                           # per output row
        return y if layer.bias is None else y + layer.bias


def as_matvec(model):
    """A twin of model for the compiled CPU step: the same parameters and buffers (shared, not
    copied), each linear layer wrapped in a MatVec."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, memo=shared)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.Linear, Int8Linear)):
                setattr(module, name, MatVec(child))
    return twin
