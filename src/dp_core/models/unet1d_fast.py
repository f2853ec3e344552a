"""Inference-only evaluation of a :class:`ConditionalUnet1D`, shaped for many small denoising steps.

The reference module spends most of a denoising step on per-operator overhead: action
chunks are a few time steps long, so every convolution is a tiny matrix product. This
path computes the same function with

* the FiLM conditioning (step embedding + observation, through every block's linear
  layer) of all denoising steps in one batched pass per chunk, since the observation
  is constant across the steps of a chunk;
* time-major activations ``(B, T, C)`` and every convolution as one ``linear`` on the
  unfolded input against a *view* of the convolution weight (no copies, so the path
  always sees the module's current weights); on a CPU this orientation of the product
  is several times faster than ``conv1d`` for these shapes;
* transposed convolutions as one product followed by strided overlap-adds;
* optionally int8 weights for the deep convolutions (:func:`quantize_convs`).

Outputs equal the module's within float rounding (tested to 1e-5 in fp32).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .skinny_matmul import (
    quantize_rows,
    skinny_linear,
    skinny_linear_finished,
    skinny_supported,
)
from .unet1d import ConditionalUnet1D, FiLMResBlock

SplitK = bool | Literal["triton"]
# Convolutions with at least this many inputs per output (in_channels x kernel) are "deep": the ones that
# get int8 weights (ONNX Runtime on a CPU, Triton on CUDA). Quantising the shallow ones too (the first
# layers read the raw 2-D action) changed the bundled state policy's score; the deep ones did not.
INT8_MIN_DEPTH = 640


def _convs(unet: nn.Module) -> list[nn.Conv1d]:
    return [m for m in unet.modules() if isinstance(m, nn.Conv1d)]


def quantize_convs(target: nn.Module, source: nn.Module) -> int:
    """Gives each deep ``nn.Conv1d`` of ``target`` (a copy of ``source``, e.g. in bf16) the int8 weights of the
    matching convolution of ``source``, one scale per output channel (:func:`~.skinny_matmul.quantize_rows`),
    as buffers ``weight_int8 (C_out, C_in * k)`` and ``weight_scale (C_out,)``; :func:`conv1d_time_major`
    then computes with those instead of the weight. Called again, refreshes them in place (so that captured
    CUDA graphs stay valid). Returns how many convolutions are quantised."""
    pairs = [(dst, src) for dst, src in zip(_convs(target), _convs(source), strict=True)
             if src.in_channels * src.kernel_size[0] >= INT8_MIN_DEPTH]
    for dst, src in pairs:
        q, scale = quantize_rows(src.weight.view(src.out_channels, -1))
        if hasattr(dst, "weight_int8"):
            dst.weight_int8.copy_(q)
            dst.weight_scale.copy_(scale)
        else:
            dst.register_buffer("weight_int8", q)
            dst.register_buffer("weight_scale", scale)
    return len(pairs)


def split_k_factor(rows: int, depth: int, cols: int, units: int = 132) -> int:
    """How many slices of the reduction dimension let a ``rows x depth @ depth x cols`` product with few
    rows occupy about ``units`` GPU multiprocessors (output tiles of 64 x 128; slices of at least 512)."""
    tiles = -(-rows // 64) * -(-cols // 128)
    split = 1
    while split * 2 * tiles <= 2 * units and depth % (split * 2) == 0 and depth // (split * 2) >= 512:
        split *= 2
    return split


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, split_k: SplitK,
            scale: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` on 2-D ``x``; with ``split_k``, as partial products over slices of the input dimension
    (one batched product, then their sum), so that a product of few rows keeps the whole GPU busy;
    ``"triton"``: the same split in one Triton kernel (:mod:`.skinny_matmul`) where it applies. ``scale``:
    ``weight`` is int8 with these row scales (:func:`quantize_convs`); the result is in ``x``'s dtype."""
    if split_k == "triton" and skinny_supported(x, weight):
        if torch.compiler.is_compiling():  # inductor fuses the sum of the partials into the operators after it
            return skinny_linear(x, weight, bias, scale=scale).to(x.dtype)
        return skinny_linear_finished(x, weight, bias, scale)  # one kernel launch that sums the partials itself
    if scale is not None:
        return _linear_dequantized(x, weight, scale, bias)
    split = split_k_factor(x.shape[0], x.shape[1], weight.shape[0]) if split_k is True else 1
    if split == 1:
        return F.linear(x, weight, bias)
    m, depth = x.shape
    n = weight.shape[0]
    a = x.view(m, split, depth // split).transpose(0, 1)  # (S, M, D/S), views of x
    w = weight.view(n, split, depth // split).permute(1, 2, 0)  # (S, D/S, N), views of the weight
    out = torch.bmm(a, w).sum(0, dtype=torch.float32)
    return out if bias is None else out + bias


def _linear_dequantized(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The int8 product without Triton: the weights are widened on every call (correct, not fast)."""
    out = F.linear(x, q.to(x.dtype)).float() * scale
    return (out if bias is None else out + bias.float()).to(x.dtype)


def conv1d_time_major(x: torch.Tensor, conv: nn.Conv1d, split_k: SplitK = False) -> torch.Tensor:
    """``conv(x)`` for time-major ``x`` of shape ``(B, T, C_in)``; returns ``(B, T_out, C_out)``. With int8
    weights (:func:`quantize_convs`), ``conv`` with those."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    b = x.shape[0]
    if k == 1 and s == 1 and p == 0:
        cols, t_out = x.reshape(-1, x.shape[-1]), x.shape[1]
    else:
        cols = F.pad(x, (0, 0, p, p)).unfold(1, k, s)  # (B, T_out, C_in, k), element [c, j] = x[t*s + j - p, c]
        t_out = cols.shape[1]
        cols = cols.reshape(b * t_out, -1)
    if hasattr(conv, "weight_int8"):
        return _linear(cols, conv.weight_int8, conv.bias, split_k, conv.weight_scale).view(b, t_out, -1)
    return _linear(cols, conv.weight.view(conv.out_channels, -1), conv.bias, split_k).view(b, t_out, -1)


def conv_transpose1d_time_major(x: torch.Tensor, conv: nn.ConvTranspose1d) -> torch.Tensor:
    """``conv(x)`` for a transposed convolution (no output padding) on time-major ``(B, T, C_in)``."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    b, t, _ = x.shape
    c_out = conv.out_channels
    cols = torch.matmul(x, conv.weight.view(conv.in_channels, c_out * k)).view(b, t, c_out, k)
    full = x.new_zeros(b, (t - 1) * s + k, c_out)
    for j in range(k):
        full[:, j : j + (t - 1) * s + 1 : s] += cols[..., j]
    length = (t - 1) * s - 2 * p + k
    return full[:, p : p + length] + conv.bias


def _group_norm_mish(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``mish(group_norm(x))`` for time-major ``x``; returns time-major."""
    y = F.group_norm(x.transpose(1, 2), norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.mish(y).transpose(1, 2)


class FastUnet1D:
    """Evaluates ``unet`` (eval mode, no gradients) step by step with precomputed conditioning.

    ``condition(timesteps, global_cond)`` once per chunk, then ``step(sample, films[i])`` for
    the ``i``-th timestep. Holds no weights of its own, only the module.
    """

    def __init__(self, unet: ConditionalUnet1D, split_k: SplitK = False) -> None:
        self.unet = unet
        self.split_k = split_k
        self.blocks: list[FiLMResBlock] = []
        for res1, res2, _ in unet.down:
            self.blocks += [res1, res2]
        self.blocks += list(unet.mid)
        for res1, res2, _ in unet.up:
            self.blocks += [res1, res2]
        for conv in unet.modules():
            if isinstance(conv, (nn.Conv1d, nn.ConvTranspose1d)):
                ok = conv.groups == 1 and conv.dilation == (1,) and conv.padding_mode == "zeros"
                if isinstance(conv, nn.ConvTranspose1d):
                    ok = ok and conv.output_padding == (0,)
                if not ok:
                    raise ValueError(f"FastUnet1D does not support {conv}")

    def film_sizes(self) -> list[int]:
        """Widths of the parts of a :meth:`film_table` row: ``scale, bias`` of each block in turn."""
        return [block.block2[0].out_channels for block in self.blocks for _ in range(2)]

    def film_table(self, timesteps: torch.Tensor, global_cond: torch.Tensor,
                   step_part: torch.Tensor | None = None) -> torch.Tensor:
        """FiLM ``scale, bias`` of every block, concatenated: ``(K, B, F)`` for the ``K`` ``timesteps``.

        All blocks read the same ``mish(cond)``, so their linear layers run as one product; ``cond`` is the
        step embedding beside the observation and Mish acts element-wise, so the product splits into a
        part of the timesteps alone (``step_part``, :meth:`film_step_part`, which a caller may keep
        across chunks of the same plan and weights) and a part of the observation.
        """
        if step_part is None:
            step_part = self.film_step_part(timesteps)
        obs_weight = self._film_weight(slice(self.unet.step_embed[-1].out_features, None))
        return step_part[:, None] + F.linear(F.mish(global_cond), obs_weight)[None]

    def film_step_part(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timesteps' part of :meth:`film_table` (bias included): ``(K, F)``."""
        emb = self.unet.step_embed(timesteps)  # (K, E)
        bias = torch.cat([block.film[1].bias for block in self.blocks])
        return F.linear(F.mish(emb), self._film_weight(slice(None, emb.shape[-1])), bias)

    def _film_weight(self, columns: slice) -> torch.Tensor:
        """The blocks' FiLM weights, stacked (rows as in a table row), restricted to input ``columns``."""
        return torch.cat([block.film[1].weight[:, columns] for block in self.blocks])

    def condition(self, timesteps: torch.Tensor, global_cond: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """FiLM ``(scale, bias)`` of every block, ``(B, 1, C)`` each, for each of ``timesteps`` (K,)."""
        table = self.film_table(timesteps, global_cond)
        parts = [p.unsqueeze(2).unbind(0) for p in table.split(self.film_sizes(), dim=-1)]
        return [[(parts[2 * j][i], parts[2 * j + 1][i]) for j in range(len(self.blocks))] for i in range(len(timesteps))]

    def _res(self, block: FiLMResBlock, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        conv1, norm1, _ = block.block1
        conv2, norm2, _ = block.block2
        h = _group_norm_mish(conv1d_time_major(x, conv1, self.split_k), norm1)
        h = torch.addcmul(film[1], film[0], h)
        h = _group_norm_mish(conv1d_time_major(h, conv2, self.split_k), norm2)
        skip = x if isinstance(block.skip, nn.Identity) else conv1d_time_major(x, block.skip, self.split_k)
        return h + skip

    def step(self, sample: torch.Tensor, films: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Predicted noise for ``sample`` ``(B, T, action_dim)`` at the step whose conditioning is ``films``."""
        unet, x, i = self.unet, sample, 0
        skips = []
        for _, _, down in unet.down:
            x = self._res(self.blocks[i + 1], self._res(self.blocks[i], x, films[i]), films[i + 1])
            i += 2
            skips.append(x)
            if not isinstance(down, nn.Identity):
                x = conv1d_time_major(x, down, self.split_k)
        for _ in unet.mid:
            x = self._res(self.blocks[i], x, films[i])
            i += 1
        for _, _, up in unet.up:
            x = torch.cat([x, skips.pop()], dim=-1)
            x = self._res(self.blocks[i + 1], self._res(self.blocks[i], x, films[i]), films[i + 1])
            i += 2
            x = conv_transpose1d_time_major(x, up)
        head_block, head_out = unet.head
        conv, norm, _ = head_block
        x = _group_norm_mish(conv1d_time_major(x, conv, self.split_k), norm)
        return conv1d_time_major(x, head_out, self.split_k)
