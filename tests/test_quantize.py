"""int8 weight-only layers (model/quantize.py): the rounding, the kernels against the plain
matmul of the same weights, and every decode path agreeing on an int8 model."""

import pytest
import torch
import torch.nn.functional as F

from model.fast_decode import StaticDecoder, fastest_dtype
from model.generate import decode
from model.quantize import Int8Linear, fuse_int8, quantize_int8, quantize_rows
from model.speculative import SpeculativeDecoder
from tests.test_fast_decode import CONFIGS, make

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_rows_are_rounded_to_their_own_scale():
    torch.manual_seed(0)
    w = torch.randn(6, 32)
    w[2] *= 1000                                       # one loud row must not coarsen the others
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    torch.testing.assert_close(scale, w.abs().amax(1) / 127)
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()    # round to nearest: half a step at most


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_is_the_matmul_of_its_dequantized_weights(dtype, bias):
    """On a CPU both go through torch's int8 kernel (float32 activations rounded to bf16 for it
    and widened back): x W'^T + b with W' = W_int8 * scale, up to bf16's rounding."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=bias)
    layer = Int8Linear.from_linear(lin.weight, lin.bias, dtype=dtype)
    x = torch.randn(2, 3, 64)
    want = F.linear(x, layer.weight.float() * layer.scales.float()[:, None],
                    None if not bias else layer.bias.float())
    got = layer(x.to(dtype))
    assert got.shape == (2, 3, 48) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=3e-2 * want.abs().max().item(), rtol=0)
    # and close to the float layer it came from (per-row int8: ~1% of the output's scale)
    assert (got.float() - lin(x)).abs().max() <= 0.02 * lin(x).abs().max()


def test_fused_int8_layers_are_the_layers_side_by_side():
    torch.manual_seed(0)
    layers = [Int8Linear.from_linear(torch.randn(n, 16), torch.randn(n)) for n in (8, 4, 4)]
    x = torch.randn(3, 16)
    torch.testing.assert_close(fuse_int8(layers)(x), torch.cat([m(x) for m in layers], -1))


def test_quantize_int8_replaces_every_linear_and_unties_the_head():
    model = quantize_int8(make())
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear) and model.wte.weight.dtype == torch.float32
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 1 + 6 * model.config.n_layer


@pytest.mark.parametrize("name", ["gqa-rope", "mqa-bias-explicit", "window-rope-gqa"])
def test_an_int8_model_decodes_the_same_on_every_path(name):
    """bf16 activations (the int8 kernel's): the plain cache, the uncached reference, the static
    step (fused q|k|v int8) and speculation give the same greedy tokens, past block_size."""
    model = quantize_int8(make(**CONFIGS[name]).to(torch.bfloat16))
    idx = torch.tensor([[1, 2, 3]])
    want = torch.cat([t for _, t in decode(model, idx, 30, temperature=0)]).tolist()
    uncached = [int(t) for _, t in decode(model, idx, 30, temperature=0, use_cache=False)]
    static = [int(t) for _, t in StaticDecoder(model, 1).decode(idx, 30, temperature=0)]
    spec = [int(t) for _, t in SpeculativeDecoder(model, None, 4, lookup_n=1).decode(idx, 30, temperature=0)]
    assert uncached == want and static == want and spec == want


def test_fastest_dtype_times_each_and_picks_the_fastest():
    model = make()
    best, times = fastest_dtype(model, steps=3, margin=1.0)
    assert set(times) == {torch.float32, torch.bfloat16} and best == min(times, key=times.get)
    assert model.wte.weight.dtype == torch.float32       # the model itself is left as it was
    # a margin no dtype can beat: the first one, always
    assert fastest_dtype(model, (torch.bfloat16, torch.float32), steps=3, margin=1e9)[0] == torch.bfloat16


@pytest.mark.cuda
def test_int8_static_step_on_cuda_passes_its_check_and_matches_the_cache():
    """On a GPU: the int8 step replayed as a CUDA graph is checked against the eager step, then
    gives the KV cache's greedy tokens (bf16 activations, the widened matmul)."""
    model = quantize_int8(make("cuda", **CONFIGS["gqa-rope"]).to(torch.bfloat16))
    idx = torch.tensor([[1, 2, 3]], device="cuda")
    dec = StaticDecoder(model, 1)
    dec.verify()
    assert dec.graph is not None
    got = [int(t) for _, t in dec.decode(idx, 30, temperature=0)]
    assert got == torch.cat([t for _, t in decode(model, idx, 30, temperature=0)]).tolist()
