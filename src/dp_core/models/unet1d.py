"""Conditional 1-D UNet over the action sequence, FiLM-conditioned on step and observation."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding of the (integer) diffusion step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


def conv_block(c_in: int, c_out: int, kernel: int, groups: int) -> nn.Sequential:
    """Conv1d -> GroupNorm -> Mish."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
        nn.GroupNorm(groups, c_out),
        nn.Mish(),
    )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the condition predicts a per-channel scale and bias after the first."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = conv_block(c_in, c_out, kernel, groups)
        self.block2 = conv_block(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block2(scale * h + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Predicts the noise of an action chunk ``(B, T, action_dim)``.

    ``global_cond`` is the flattened observation feature ``(B, cond_dim)``; it is
    concatenated with the diffusion-step embedding and fed to every residual block.
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: list[int],
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
    ) -> None:
        super().__init__()
        self.step_embed = nn.Sequential(
            SinusoidalEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        c = step_embed_dim + cond_dim
        dims = [action_dim, *down_dims]
        levels = list(zip(dims[:-1], dims[1:]))

        def res(a: int, b: int) -> FiLMResBlock:
            return FiLMResBlock(a, b, c, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(levels):
            last = i == len(levels) - 1
            down = nn.Identity() if last else nn.Conv1d(b, b, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(a, b), res(b, b), down]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([res(mid, mid), res(mid, mid)])
        self.up = nn.ModuleList()
        for a, b in reversed(levels[1:]):
            up = nn.ConvTranspose1d(a, a, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * b, a), res(a, a), up]))
        self.head = nn.Sequential(
            conv_block(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        x = sample.transpose(1, 2)
        if timestep.dim() == 0:
            timestep = timestep.expand(x.shape[0])
        cond = torch.cat([self.step_embed(timestep), global_cond], dim=-1)
        skips = []
        for res1, res2, down in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid:
            x = block(x, cond)
        for res1, res2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, cond), cond))
        return self.head(x).transpose(1, 2)
