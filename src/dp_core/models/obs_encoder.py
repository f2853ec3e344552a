"""Observation encoder: one ResNet per camera plus the normalised low-dim streams."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ShapeMeta, VisionConfig
from .vision import ResNetEncoder, crop_images


class ObsEncoder(nn.Module):
    """Maps normalised observations ``{key: (B, To, ...)}`` to features ``(B, To, D)``.

    Images arrive as ``(B, To, 3, H, W)`` in [0, 1]; they are randomly cropped in
    training mode and centre-cropped in eval mode, then encoded by their own ResNet.
    """

    def __init__(self, shape_meta: ShapeMeta, vision: VisionConfig) -> None:
        super().__init__()
        self.rgb_keys = shape_meta.rgb_keys
        self.low_dim_keys = shape_meta.low_dim_keys
        self.crop = tuple(vision.crop_shape) if vision.crop_shape else None
        self.cameras = nn.ModuleDict(
            {
                k: ResNetEncoder(vision.num_keypoints, vision.feature_dim, vision.group_norm_channels)
                for k in self.rgb_keys
            }
        )
        self.feature_dim = len(self.rgb_keys) * vision.feature_dim + sum(
            shape_meta.obs[k].shape[0] for k in self.low_dim_keys
        )

    def forward(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        feats = []
        for key in self.rgb_keys:
            img = obs[key]
            b, t = img.shape[:2]
            flat = img.reshape(b * t, *img.shape[2:])
            if self.crop is not None:
                flat = crop_images(flat, self.crop, random=self.training, generator=generator)
            feats.append(self.cameras[key](flat).reshape(b, t, -1))
        feats.extend(obs[key] for key in self.low_dim_keys)
        return torch.cat(feats, dim=-1)
