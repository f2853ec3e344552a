"""Image encoder: ResNet-18 with GroupNorm and a spatial-softmax head, one per camera."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18


class SpatialSoftmax(nn.Module):
    """Feature map -> expected (x, y) image position of ``num_keypoints`` learned keypoints."""

    def __init__(self, channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        logits = self.proj(feat).flatten(2)
        attn = logits.softmax(-1).view(b, -1, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=attn.dtype)
        x = (attn.sum(2) * xs).sum(-1)
        y = (attn.sum(3) * ys).sum(-1)
        return torch.stack([x, y], dim=-1).flatten(1)


class ResNetEncoder(nn.Module):
    """ResNet-18 trunk (no pretrained weights), BatchNorm -> GroupNorm, spatial softmax, linear."""

    def __init__(self, num_keypoints: int = 32, feature_dim: int = 64, group_norm_channels: int = 16) -> None:
        super().__init__()
        net = resnet18(weights=None, norm_layer=lambda c: nn.GroupNorm(c // group_norm_channels, c))
        self.trunk = nn.Sequential(*list(net.children())[:-2])
        self.pool = SpatialSoftmax(512, num_keypoints)
        self.out = nn.Sequential(nn.Linear(2 * num_keypoints, feature_dim), nn.ReLU())
        self.feature_dim = feature_dim

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.trunk(img)))


def crop_images(img: torch.Tensor, size: tuple[int, int], random: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop ``(N, C, H, W)`` to ``size``: independently random per image, or centred."""
    n, c, h, w = img.shape
    ch, cw = size
    if (ch, cw) == (h, w):
        return img
    if ch > h or cw > w:
        raise ValueError(f"crop {size} larger than image {(h, w)}")
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return img[:, :, top : top + ch, left : left + cw]
    gen_device = generator.device if generator is not None else "cpu"  # a CUDA generator draws on the GPU
    tops = torch.randint(0, h - ch + 1, (n,), generator=generator, device=gen_device).to(img.device)
    lefts = torch.randint(0, w - cw + 1, (n,), generator=generator, device=gen_device).to(img.device)
    rows = (tops[:, None] + torch.arange(ch, device=img.device))[:, None, :, None].expand(n, c, ch, w)
    out = img.gather(2, rows)
    cols = (lefts[:, None] + torch.arange(cw, device=img.device))[:, None, None, :].expand(n, c, ch, cw)
    return out.gather(3, cols)

