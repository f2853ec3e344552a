"""Split-K Triton kernel for "skinny" products ``x @ weight.T`` with few rows (``M <= 16``).

At inference the diffusion-policy UNet multiplies a handful of rows (batch x horizon, e.g. 4 to 16)
by convolution weights of up to 1024 x 10240. These products are bound by reading the weight once,
but cuBLAS tiles only the output, so it launches about ``N / 128`` thread blocks and leaves most of
an H100 idle, far below memory bandwidth. This kernel also splits the reduction dimension ``K``
over ``SPLIT`` programs per output tile, so that about twice as many programs as multiprocessors
stream the weight, and writes one fp32 partial product per slice. Two ways to finish:

* :func:`skinny_partials` returns the partials and leaves their sum (and the bias) to the caller:
  under ``torch.compile`` inductor fuses it into the element-wise / group-norm kernel that follows;
* :func:`skinny_linear_finished` is one launch: the last program to finish an output tile (an atomic
  count per tile) sums the tile's partials in slice order, adds the bias and stores the result; the
  counts live in one buffer per device that each launch leaves at zero, so products on one device
  must be issued in stream order (not concurrently from several streams).

Weights may also be int8 with one fp32 scale per output row (``weight * scale[:, None]`` is the
weight meant; "W8A16"): the kernel widens them to bf16 in registers and scales its fp32 partials, so
each product reads half the bytes of bf16 weights. Inputs are then rounded to bf16.

Both are deterministic. The ops are registered as ``torch.ops.dp_core.*`` with fake implementations,
and the launch configuration is a fixed function of shapes, dtype and SM count (no autotuning), so
they run under ``torch.compile(dynamic=False)`` and inside CUDA graph capture. With ``TRITON_INTERPRET=1``
set before Triton is imported, the kernel also runs on CPU tensors (used by the tests).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: skinny_supported() is False
    triton = None

MAX_ROWS = 16
MIN_DEPTH = 256
_MIN_SLICE = 256
_DTYPES = (torch.float32, torch.bfloat16)  # of inputs, and of weights besides int8


class LaunchConfig(NamedTuple):
    """Tile sizes, warps and pipeline stages of the kernel; ``input_precision`` of its fp32 dots."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    input_precision: str | None = None


# Defaults by weight dtype, from benchmarks/bench_skinny_matmul.py on an H100 (the UNet's shapes, M = 4
# and 16). bf16: 32 x 128 weight tiles (8 KiB a stage), four stages; within 5% of the best swept config
# on every shape, 1.8 to 2.2 TB/s of weight reads on the large ones. fp32: dots as "tf32x3" (three
# tensor-core products of split operands, about fp32 accuracy, tested to 1e-4); exact "ieee" dots run on
# FMA units and left the kernel compute-bound at about 0.8 TB/s, against 2.3 TB/s with "tf32x3". int8: the
# same tiles (4 KiB a stage): best or within 1% of the best of eleven configs, summed over the shapes at
# M = 16 (two machines); 1024 x 10240: 7.3 us, 1.4 TB/s, against 9.5-10.0 for bf16; the small shapes gain
# less (bound by latency, not bytes). The dot swapped (weight tile as the 64-row operand, for Hopper's
# warp-group MMA) measured 4% faster for bf16 and 17% slower for int8 on that sum: not used.
CONFIGS: dict[torch.dtype, LaunchConfig] = {
    torch.bfloat16: LaunchConfig(32, 128, 4, 4),
    torch.float32: LaunchConfig(64, 64, 4, 3, "tf32x3"),
    torch.int8: LaunchConfig(32, 128, 4, 4),
}

if triton is not None:

    @triton.jit
    def _skinny_partials_kernel(
        x_ptr, w_ptr, scale_ptr, out_ptr, bias_ptr, final_ptr, count_ptr, M, N, K, K_PER_SPLIT, SPLIT,
        stride_xm, stride_xk, stride_wn, stride_wk,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        EVEN_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        FINISH: tl.constexpr, HAS_BIAS: tl.constexpr, SCALED: tl.constexpr,
    ):
        """Program (n, s): the fp32 product of x[:, slice s] and weight[tile n, slice s] into out[s].

        ``SCALED``: int8 weights, widened to bf16 for the dot with x rounded to bf16; the partial is
        multiplied by the rows' scales.

        ``FINISH``: the program that completes tile n last (an atomic count per tile) also sums the
        tile's partials in slice order, adds the bias and stores the result in ``final``'s dtype, then
        resets the count for the next launch; so the product is one kernel, and still deterministic.
        """
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = pid_s * K_PER_SPLIT + tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K_PER_SPLIT, BLOCK_K):
            if EVEN_K:  # every slice is full, and slices are multiples of BLOCK_K
                x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
                w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)
            else:
                mask_k = offs_k < K - k0
                x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            if SCALED:  # (the interpreter cannot widen int8 to bf16: straight to fp32, exact either way)
                x = x.to(tl.bfloat16)
                w = w.to(tl.float32 if UPCAST else tl.bfloat16)
            else:
                x = x.to(w.dtype)
            if UPCAST:  # the interpreter's dot multiplies bf16 as raw uint16; bf16 products are exact in fp32
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        if SCALED:
            acc *= tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        mask_out = mask_m[:, None] & mask_n[None, :]
        tile = offs_m[:, None] * N + offs_n[None, :]
        tl.store(out_ptr + pid_s * M * N + tile, acc, mask=mask_out)
        if FINISH:
            tl.debug_barrier()  # every thread's partial is stored before this program is counted
            arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(0, SPLIT):  # ".cg": read the other programs' partials from L2, not L1
                    total += tl.load(out_ptr + s * M * N + tile, mask=mask_out, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
                tl.store(final_ptr + tile, total.to(final_ptr.dtype.element_ty), mask=mask_out)
                tl.atomic_xchg(count_ptr + pid_n, 0)


def available() -> bool:
    """Whether Triton is installed (the kernel then runs on CUDA tensors)."""
    return triton is not None


@functools.cache
def _capable(device: torch.device) -> bool:
    """tf32 and bf16 tensor-core dots need compute capability 8.0 (Ampere) or newer."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


def _device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def works(device: torch.device) -> bool:
    """Whether the kernel builds and computes ``F.linear`` on ``device`` (probed once per device, with fp32,
    bf16 and int8 weights, both finishes). False, with a warning, where Triton is missing, the GPU predates compute capability
    8.0, or Triton cannot build its launcher (it needs a C compiler and the Python headers at run time);
    the callers then use cuBLAS instead of failing in a policy's first chunk."""
    return _works(_device(device))


@functools.cache
def _works(device: torch.device) -> bool:
    if triton is None or not (device.type == "cuda" or _interpreting()) or not _capable(device):
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16, torch.int8):
            x = torch.randn(4, 512, device=device, generator=g).to(torch.bfloat16 if dtype == torch.int8 else dtype)
            w = torch.randn(96, 512, device=device, generator=g)
            w, scale = quantize_rows(w) if dtype == torch.int8 else (w.to(dtype), None)
            ref = F.linear(x.float(), w.float() if scale is None else w.float() * scale[:, None])
            for out in (skinny_linear_finished(x, w, None, scale), skinny_linear(x, w, None, scale=scale)):
                err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                if not err < 2e-2:
                    raise RuntimeError(f"{dtype} result off by {err:.3g} (relative)")
    except Exception as exc:  # noqa: BLE001  (any failure means: do not use the kernel here)
        warnings.warn(f"Triton products unavailable on {device}, using cuBLAS: {exc!r}", RuntimeWarning, stacklevel=3)
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def skinny_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`skinny_partials` handles ``x @ weight.T`` (CUDA, or CPU under the Triton interpreter)."""
    return (
        triton is not None
        and (x.is_cuda or _interpreting())
        and _capable(x.device)
        and x.device == weight.device
        and x.dim() == 2
        and 1 <= x.shape[0] <= MAX_ROWS
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.shape[1] == x.shape[1] >= MIN_DEPTH
        and weight.shape[0] >= 1
        and x.dtype in _DTYPES
        and (weight.dtype in _DTYPES or weight.dtype == torch.int8)
    )


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 copy of a 2-D ``weight`` with one fp32 scale per row: ``(q, scale)`` such that
    ``q * scale[:, None]`` rounds ``weight`` to the nearest of 255 levels in ``[-max|row|, max|row|]``."""
    w = weight.detach().float()
    scale = w.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _config(weight: torch.Tensor, **overrides: int | str | None) -> LaunchConfig:
    """The dtype's default launch configuration with the fields given (not ``None``) in ``overrides``."""
    return CONFIGS[weight.dtype]._replace(**{k: v for k, v in overrides.items() if v is not None})


def _split(depth: int, tiles: int, block_k: int, units: int, split: int | None) -> tuple[int, int]:
    """``(SPLIT, K_PER_SPLIT)``: a requested ``split`` as given (trailing slices may be empty); else
    about ``2 * units`` programs in all, slices of at least 256 (or ``block_k``), multiples of ``block_k``."""
    if split is None:
        most = max(1, depth // max(_MIN_SLICE, block_k))
        split = min(max(1, -(-2 * units // tiles)), most)
        per = -(-depth // split)
        per = -(-per // block_k) * block_k
        return -(-depth // per), per
    if split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    per = -(-depth // split)
    return split, -(-per // block_k) * block_k


def _launch_shape(x: torch.Tensor, weight: torch.Tensor, split: int | None, config: LaunchConfig) -> tuple[int, int]:
    """``(SPLIT, K_PER_SPLIT)`` of a launch: a function of shapes, config and SM count alone."""
    tiles = -(-weight.shape[0] // config.block_n)
    return _split(weight.shape[1], tiles, config.block_k, _sm_count(x.device), split)


_COUNTS = 1 << 16  # tiles per product that the per-device count buffer serves
_counts: dict[torch.device, torch.Tensor] = {}


def _count_buffer(device: torch.device, tiles: int) -> torch.Tensor:
    """The per-device tile counts of finishing launches: zero between launches (the last program of a
    tile resets its count), so one buffer serves every product issued in stream order on the device."""
    if tiles > _COUNTS:
        raise ValueError(f"skinny_linear: {tiles} output tiles, at most {_COUNTS}")
    if device not in _counts:
        _counts[device] = torch.zeros(_COUNTS, dtype=torch.int32, device=device)
    return _counts[device]


def _launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
            final: torch.Tensor | None, split: int | None, config: LaunchConfig) -> torch.Tensor:
    """Runs the kernel; returns the partials ``(SPLIT, M, N)`` (into which ``final``, if given, was also summed)."""
    if triton is None:
        raise RuntimeError("skinny_linear needs Triton")
    if (weight.dtype == torch.int8) != (scale is not None):
        raise ValueError("int8 weights need their row scales, and only int8 weights take scales")
    if scale is not None and (scale.shape != (weight.shape[0],) or scale.dtype != torch.float32 or not scale.is_contiguous()):
        raise ValueError(f"scale must be contiguous fp32 of shape ({weight.shape[0]},), got {scale.dtype} {tuple(scale.shape)}")
    n_split, per = _launch_shape(x, weight, split, config)
    m, depth = x.shape
    n = weight.shape[0]
    tiles = triton.cdiv(n, config.block_n)
    partials = torch.empty((n_split, m, n), dtype=torch.float32, device=x.device)
    finish = final is not None
    counts = _count_buffer(x.device, tiles) if finish else partials
    _skinny_partials_kernel[(tiles, n_split)](
        x, weight, scale if scale is not None else partials, partials, bias if bias is not None else partials,
        final if finish else partials, counts,
        m, n, depth, per, n_split, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        BLOCK_M=MAX_ROWS, BLOCK_N=config.block_n, BLOCK_K=config.block_k, EVEN_K=n_split * per == depth,
        PRECISION=config.input_precision, UPCAST=_interpreting(), FINISH=finish, HAS_BIAS=bias is not None,
        SCALED=scale is not None, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return partials


@torch.library.custom_op("dp_core::skinny_partials", mutates_args=())
def skinny_partials(
    x: torch.Tensor, weight: torch.Tensor, split: int | None = None, block_n: int | None = None,
    block_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
    input_precision: str | None = None, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Partial products ``(SPLIT, M, N)`` in fp32 of ``x (M, K) @ weight (N, K).T`` over slices of ``K``;
    their sum over dim 0 is the product. Launch fields left ``None`` come from :data:`CONFIGS`; ``scale``:
    the row scales of int8 weights (:func:`quantize_rows`)."""
    config = _config(weight, block_n=block_n, block_k=block_k, num_warps=num_warps, num_stages=num_stages,
                     input_precision=input_precision)
    return _launch(x, weight, scale, None, None, split, config)


@skinny_partials.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, split: int | None = None, block_n: int | None = None,
    block_k: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
    input_precision: str | None = None, scale: torch.Tensor | None = None,
) -> torch.Tensor:
    config = _config(weight, block_n=block_n, block_k=block_k, num_warps=num_warps, num_stages=num_stages,
                     input_precision=input_precision)
    n_split, _ = _launch_shape(x, weight, split, config)
    return x.new_empty((n_split, x.shape[0], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("dp_core::skinny_linear_finished", mutates_args=())
def skinny_linear_finished(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           scale: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in ``x``'s dtype as one kernel launch: the partial products are summed
    (in slice order) and the bias added by the last program of each output tile (``scale``: as in
    :func:`skinny_partials`)."""
    final = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    _launch(x, weight, scale, bias, final, None, _config(weight))
    return final


@skinny_linear_finished.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None = None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  **launch: torch.Tensor | int | str | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in fp32 for 2-D ``x`` via :func:`skinny_partials` (``launch``: its
    ``split``, config overrides and ``scale``)."""
    out = skinny_partials(x, weight, **launch).sum(0)
    return out if bias is None else out + bias.float()
