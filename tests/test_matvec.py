"""One-row linear layers for the compiled CPU step (model/matvec.py): the twin shares the model's
tensors, one row compiles to a multiply and a sum (no matmul) that equals the matmul, and the
compiled static step built on it decodes the same tokens as the eager step."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.backends.registry import lookup_backend

from model.fast_decode import StaticDecoder
from model.matvec import MatVec, as_matvec
from model.quantize import Int8Linear, quantize_int8
from tests.test_fast_decode import CONFIGS, make

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def layers():
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    return {"float": lin, "float, no bias": nn.Linear(48, 40, bias=False),
            "int8": Int8Linear.from_linear(lin.weight, lin.bias)}


def reference(layer, x):
    """y = x W^T (* scales) (+ b), with W widened to float: what MatVec computes."""
    y = F.linear(x, layer.weight.float())
    if isinstance(layer, Int8Linear):
        y = y * layer.scales
    return y if layer.bias is None else y + layer.bias


@pytest.mark.parametrize("kind", ["float", "float, no bias", "int8"])
def test_one_row_compiles_to_a_multiply_and_a_sum_equal_to_the_matmul(kind):
    layer = layers()[kind]
    graphs = []

    def record(gm, example_inputs):                     # the graph Inductor would be given
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    f = torch.compile(MatVec(layer), backend=record, fullgraph=True)
    x = torch.randn(1, 1, 48)
    with torch.no_grad():
        torch.testing.assert_close(f(x), reference(layer, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(MatVec(layer)(x), reference(layer, x), rtol=1e-5, atol=1e-5)  # eager
    ops = {str(n.target) for g in graphs for n in g.graph.nodes if n.op in ("call_function", "call_method")}
    assert "sum" in ops and not any("linear" in op or "mm" in op or "matmul" in op for op in ops), ops
    torch._dynamo.reset()


def test_more_rows_run_the_layers_own_forward():
    layer = layers()["int8"]                            # torch's CPU int8 kernel, bf16 inside
    x = torch.randn(3, 48)
    torch.testing.assert_close(MatVec(layer)(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_the_twin_shares_every_tensor(int8):
    model = make(**CONFIGS["gqa-rope"])
    model = quantize_int8(model) if int8 else model
    twin = as_matvec(model)
    mine = {n: t.data_ptr() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    theirs = {n.replace(".layer.", "."): t.data_ptr()
              for n, t in list(twin.named_parameters()) + list(twin.named_buffers())}
    assert mine == theirs                               # nothing copied, every tensor there
    wrapped = [m for m in twin.modules() if isinstance(m, MatVec)]
    assert len(wrapped) == sum(isinstance(m, (nn.Linear, Int8Linear)) for m in model.modules())
    assert not any(isinstance(m, MatVec) for m in model.modules())   # the model is untouched


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_the_compiled_cpu_step_decodes_what_the_eager_step_does(int8):
    """The real thing: Inductor builds the one-row step in C++. It must pass its own check and
    pick the same greedy tokens as the same math run eagerly, over the filled slots only."""
    model = make(**CONFIGS["mha-learned"])
    model = quantize_int8(model) if int8 else model
    torch._dynamo.reset()
    compiled = StaticDecoder(model, 1, compile=True)
    assert any(isinstance(m, MatVec) for m in compiled.model.modules())
    compiled.verify()
    eager = StaticDecoder(as_matvec(model), 1)          # the same math, op by op
    idx = torch.tensor([[3, 1, 4]])
    want = [t for _, t in eager.decode(idx, 12, temperature=0)]
    got = [t for _, t in compiled.decode(idx, 12, temperature=0)]
    assert torch.equal(torch.stack(got), torch.stack(want))
    torch._dynamo.reset()
