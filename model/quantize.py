"""Fewer bytes per token: int8 weight-only linear layers (quantize_int8).

Decoding one token reads every weight once and does two flops per weight read, so on a CPU (and
on a GPU at small batch) a decode step is bound by memory bandwidth: its time is the weights'
bytes over the bandwidth. float32 is 4 bytes a weight, bfloat16 2 (sample.py --dtype), int8 1.

Int8Linear keeps W (out, in) as int8 with one scale per output channel (row):
    W ~= W_int8 * scale[:, None],   scale = max|row| / 127
so y = x W^T = (x W_int8^T) * scale: the matmul reads int8 weights and the scale is applied to
its output. Per-row scales follow each channel's own range (a few large rows do not cost the
others their precision). Only the weights change; activations, norms, attention and the KV
cache stay in the model's dtype. On a CPU the matmul is torch._weight_int8pack_mm (int8 weights,
bf16 activations, the scales fused): float32 activations are rounded to bf16 for it and its
output widened back, so the rest of a float32 model (attention above all, whose bf16 kernel is
slow for one query on a CPU) stays float32. Elsewhere the weights are widened to the
activations' dtype inside the matmul's expression, which torch.compile fuses into one kernel
(how gpt-fast runs int8 on a GPU).

Every linear layer of the blocks and the head are quantized; the embedding tables stay as they
are (one row is read per token). A tied head gets its own int8 copy of the token table.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def quantize_rows(w):
    """w (out, in) float -> (int8 (out, in), scales (out,) float32): symmetric, per output row."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer y = x W^T + b with W stored as int8 and per-output-channel scales."""

    def __init__(self, weight_int8, scales, bias=None):
        super().__init__()
        self.register_buffer("weight", weight_int8)                        # (out, in) int8
        self.register_buffer("scales", scales)                             # (out,) activation dtype
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16))     # the CPU kernel's
        self.register_buffer("bias", bias)                                 # (out,) or None
        self.in_features, self.out_features = weight_int8.size(1), weight_int8.size(0)

    @classmethod
    def from_linear(cls, weight, bias=None, dtype=None):
        """From a float weight (out, in) and bias; scales and bias in dtype (default: weight's)."""
        dtype = dtype or weight.dtype
        q, scale = quantize_rows(weight)
        return cls(q, scale.to(dtype), None if bias is None else bias.detach().to(dtype))

    def forward(self, x):                                                  # (..., in)
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32):
            x2 = x.reshape(-1, x.size(-1)).to(torch.bfloat16)              # (M, in)
            y = torch._weight_int8pack_mm(x2, self.weight, self.scales_bf16)
            y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales
        return y + self.bias if self.bias is not None else y


def quantize_int8(model):
    """Replace every nn.Linear of model (the blocks' and the head) by an Int8Linear, in place;
    returns model. Cast the model to its decoding dtype first: the scales and bias take it."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear.from_linear(child.weight, child.bias))
    return model


def fuse_int8(layers):
    """Int8Linear layers of the same input, stacked as one (out1 + out2 + ..., in). Per-row
    scales make this exact: each row keeps its own scale."""
    bias = None if layers[0].bias is None else torch.cat([m.bias for m in layers])
    return Int8Linear(torch.cat([m.weight for m in layers]), torch.cat([m.scales for m in layers]), bias)
