"""Per-dimension min/max normalisation to [-1, 1]; images scaled to [0, 1].

The statistics are buffers of an ``nn.Module``, so they travel inside the policy's
state dict and therefore inside every checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_MIN_RANGE = 1e-4


class RangeNormalizer(nn.Module):
    """Maps each dimension of one stream from [min, max] to [-1, 1].

    Dimensions whose range is below ``1e-4`` (constant in the data) map to 0.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))

    def fit(self, data: np.ndarray | torch.Tensor) -> "RangeNormalizer":
        data = torch.as_tensor(np.asarray(data), dtype=torch.float32).reshape(-1, self.scale.numel())
        lo, hi = data.min(0).values, data.max(0).values
        span = hi - lo
        const = span < _MIN_RANGE
        scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(_MIN_RANGE))
        offset = torch.where(const, -(hi + lo) / 2, -1.0 - scale * lo)
        self.scale.copy_(scale)
        self.offset.copy_(offset)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.offset) / self.scale


class Normalizer(nn.Module):
    """One :class:`RangeNormalizer` per low-dim key plus ``action``; images go to [0, 1]."""

    def __init__(self, low_dims: dict[str, int], action_dim: int) -> None:
        super().__init__()
        self.streams = nn.ModuleDict({k: RangeNormalizer(d) for k, d in low_dims.items()})
        self.action = RangeNormalizer(action_dim)

    def fit(self, low_dim_data: dict[str, np.ndarray], action_data: np.ndarray) -> "Normalizer":
        for key, norm in self.streams.items():
            norm.fit(low_dim_data[key])
        self.action.fit(action_data)
        return self

    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in obs.items():
            if key in self.streams:
                out[key] = self.streams[key](value.float())
            else:
                out[key] = image_to_unit(value)
        return out


def image_to_unit(img: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 or 0-255 float -> (..., 3, H, W) float in [0, 1] (never modifies ``img``)."""
    img = img.movedim(-1, -3)
    return img / 255.0 if img.dtype == torch.float32 else img.float().div_(255.0)  # .float() of fp32 is img itself
