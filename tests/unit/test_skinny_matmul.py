"""The split-K skinny kernel computes ``F.linear``: on CPU under the Triton interpreter, and on CUDA."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import run_triton_interpreted

from dp_core.models.skinny_matmul import (
    quantize_rows,
    skinny_linear,
    skinny_linear_finished,
    skinny_partials,
    skinny_supported,
    works,
)

pytest.importorskip("triton")

# Runs in a child process: TRITON_INTERPRET must be set before Triton is imported.
INTERPRETED = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from dp_core.models.skinny_matmul import (_counts, quantize_rows, skinny_linear, skinny_linear_finished,
                                              skinny_partials, skinny_supported)

    torch.manual_seed(0)
    cases = [(1, 64, 256, None), (4, 200, 640, None), (16, 200, 1000, None), (4, 64, 1000, 3),
             (16, 64, 640, 1), (1, 200, 256, 4)]
    for dtype, tol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]:
        for m, n, k, split in cases:
            x, w, b = torch.randn(m, k), torch.randn(n, k).to(dtype), torch.randn(n)
            assert skinny_supported(x, w)
            parts = skinny_partials(x, w, split)
            assert parts.dtype == torch.float32 and parts.shape[1:] == (m, n)
            assert split is None or parts.shape[0] == split
            for bias in (None, b):
                ref = F.linear(x.to(dtype).float(), w.float(), bias)
                out = skinny_linear(x, w, bias, split=split)
                err = ((out - ref).abs().max() / ref.abs().max()).item()
                assert out.dtype == torch.float32 and err < tol, (dtype, m, n, k, split, err)
    x = torch.randn(16, 640)[:, ::2]  # strided rows and columns
    w = torch.randn(64, 320)
    assert torch.allclose(skinny_linear(x, w, None, block_k=32), x @ w.T, rtol=1e-4, atol=1e-4)
    torch.library.opcheck(skinny_partials, (torch.randn(4, 256), torch.randn(64, 256).bfloat16(), 2))
    # One launch: the last program of each tile sums the partials and adds the bias, in x's dtype.
    for dtype, tol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]:
        for m, n, k in [(1, 64, 256), (4, 200, 640), (16, 64, 5120)]:
            x, w, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
            for bias in (None, b, None):  # twice without bias: the tile counts are back to zero
                out = skinny_linear_finished(x, w, bias)
                ref = F.linear(x.float(), w.float(), None if bias is None else bias.float())
                err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                assert out.dtype == dtype and out.shape == (m, n) and err < tol, (dtype, m, n, k, err)
    # int8 weights with one scale per row, bf16 inputs: the product with the dequantised weight.
    for m, n, k, split in [(1, 64, 256, None), (4, 200, 640, None), (16, 64, 5120, None), (16, 40, 1000, 3)]:
        x, (q, scale), b = torch.randn(m, k).bfloat16(), quantize_rows(torch.randn(n, k)), torch.randn(n)
        assert skinny_supported(x, q) and skinny_supported(x.float(), q)
        ref = F.linear(x.float(), q.float() * scale[:, None], b)
        for inputs in (x, x.float()):  # fp32 inputs are rounded to bf16 in the kernel
            out = skinny_linear(inputs, q, b, split=split, scale=scale)
            assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5, (m, n, k)
        fin = skinny_linear_finished(x, q, b.bfloat16(), scale)
        assert fin.dtype == torch.bfloat16 and ((fin.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2
    try:
        skinny_partials(x, q)
    except ValueError as exc:
        assert "scale" in str(exc)
    else:
        raise AssertionError("int8 weights without scales were accepted")
    assert not any(c.any() for c in _counts.values())
    torch.library.opcheck(skinny_linear_finished, (torch.randn(4, 256), torch.randn(64, 256), torch.randn(64)))
    q, scale = quantize_rows(torch.randn(64, 256))
    torch.library.opcheck(skinny_partials, (torch.randn(4, 256).bfloat16(), q), {"scale": scale})
    torch.library.opcheck(skinny_linear_finished, (torch.randn(4, 256).bfloat16(), q, None, scale))
    # The probe that decides whether the default path uses the kernel: passes here, and a kernel that fails
    # (e.g. Triton cannot build its launcher without a C compiler) means a warning and cuBLAS, not an error.
    import warnings
    from dp_core.models import skinny_matmul
    assert skinny_matmul.works(torch.device("cpu"))
    def broken(*args):
        raise RuntimeError("Failed to find C compiler")
    skinny_matmul.skinny_linear_finished = broken
    skinny_matmul._works.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not skinny_matmul.works(torch.device("cpu"))
    assert any("C compiler" in str(w.message) for w in caught)
    print("ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the CUDA tests run the kernel itself")
def test_interpreted_kernel_matches_linear() -> None:
    run_triton_interpreted(INTERPRETED)


def test_supported_shapes() -> None:
    x, w = torch.randn(4, 256), torch.randn(64, 256)
    assert not skinny_supported(x, w)  # CPU without the interpreter
    assert not works(torch.device("cpu"))
    if torch.cuda.is_available():
        x, w = x.cuda(), w.cuda()
        assert skinny_supported(x, w) and skinny_supported(x.bfloat16(), w.bfloat16())
        assert not skinny_supported(torch.randn(17, 256, device="cuda"), w)
        assert not skinny_supported(x[:, :128], w[:, :128])  # K < 256
        assert not skinny_supported(x, w.t().contiguous().t())  # non-contiguous weight
        assert not skinny_supported(x.half(), w.half())


UNET_SHAPES = [(256, 1280), (512, 2560), (1024, 5120), (1024, 10240), (512, 5120)]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _operands(m: int, n: int, k: int, dtype: torch.dtype, g: torch.Generator) -> tuple:
    """``x, weight, scale, bias`` on CUDA; int8: weights quantised per row, bf16 inputs."""
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16 if dtype == torch.int8 else dtype)
    w = torch.randn(n, k, device="cuda", generator=g)
    w, scale = quantize_rows(w) if dtype == torch.int8 else (w.to(dtype), None)
    return x, w, scale, torch.randn(n, device="cuda", generator=g).to(x.dtype)


def _dense(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return w.double() if scale is None else w.double() * scale.double()[:, None]


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.int8, 2e-2)])
@pytest.mark.parametrize("m", [16, 8, 4])
def test_unet_shapes_cuda(m: int, dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    for n, k in UNET_SHAPES:
        x, w, scale, b = _operands(m, n, k, dtype, g)
        assert skinny_supported(x, w)
        ref = F.linear(x.double(), _dense(w, scale), b.double())
        if dtype == torch.int8:  # fp32 inputs (between the UNet's layers under autocast): rounded to bf16 in the kernel
            assert torch.equal(skinny_linear(x.float(), w, b, scale=scale), skinny_linear(x, w, b, scale=scale))
        out = skinny_linear(x, w, b, scale=scale)
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        assert out.dtype == torch.float32 and err < tol, (n, k, err)
        assert torch.equal(out, skinny_linear(x, w, b, scale=scale))  # deterministic
        finished = skinny_linear_finished(x, w, b, scale)  # one launch, in x's dtype (partials summed in slice order)
        assert finished.dtype == x.dtype and ((finished.float() - ref).abs().max() / ref.abs().max()).item() < tol
        assert torch.equal(finished, skinny_linear_finished(x, w, b, scale))
        if dtype == torch.float32:  # the exact FMA dots, as an override
            exact = skinny_linear(x, w, b, input_precision="ieee")
            assert ((exact - ref).abs().max() / ref.abs().max()).item() < tol


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_cuda_graph_and_compile(dtype: torch.dtype) -> None:
    x, w, scale, b = _operands(8, 512, 2560, dtype, torch.Generator(device="cuda").manual_seed(0))
    torch.library.opcheck(skinny_partials, (x, w), {"scale": scale})

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        skinny_linear(x, w, b, scale=scale)  # warm up (compiles the kernel) outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = skinny_linear(x, w, b, scale=scale)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, F.linear(x.double(), _dense(w, scale), b.double()).float(), rtol=1e-3, atol=1e-3)

    with torch.cuda.stream(stream):
        skinny_linear_finished(x, w, b, scale)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        finished = skinny_linear_finished(x, w, b, scale)
    for _ in range(3):  # every replay finds the tile counts back at zero
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        ref = F.linear(x.double(), _dense(w, scale), b.double()).float()
        torch.testing.assert_close(finished.float(), ref, rtol=1e-2, atol=1e-2)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return F.mish(skinny_linear(x, w, b, scale=scale)) + skinny_linear_finished(x, w, b, scale)

    compiled = torch.compile(fn, dynamic=False, fullgraph=True)
    torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
