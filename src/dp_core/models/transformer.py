"""Time-series diffusion transformer: the paper's transformer denoiser.

Action tokens go through causal self-attention and cross-attend to a condition
sequence made of one diffusion-step token followed by one token per observation step.
"""

from __future__ import annotations

import torch
from torch import nn

from .unet1d import SinusoidalEmbedding


class TransformerDenoiser(nn.Module):
    """Predicts the noise of ``(B, T, action_dim)`` given per-step obs features ``(B, To, D)``."""

    def __init__(
        self,
        action_dim: int,
        obs_feature_dim: int,
        horizon: int,
        n_obs_steps: int,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.3,
        causal_attn: bool = True,
    ) -> None:
        super().__init__()
        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.step_emb = SinusoidalEmbedding(n_emb)
        self.obs_emb = nn.Linear(obs_feature_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.cond_encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(
            d_model=n_emb,
            nhead=n_head,
            dim_feedforward=4 * n_emb,
            dropout=p_drop_attn,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=n_layer)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        if causal_attn:
            # Action t attends to actions <= t, to the step token and to obs tokens k <= t.
            t = torch.arange(horizon)
            self_mask = t[None, :] > t[:, None]
            k = torch.arange(n_obs_steps)
            obs_mask = k[None, :] > t[:, None]
            cross_mask = torch.cat([torch.zeros(horizon, 1, dtype=torch.bool), obs_mask], dim=1)
            self.register_buffer("self_mask", _additive(self_mask), persistent=False)
            self.register_buffer("cross_mask", _additive(cross_mask), persistent=False)
        else:
            self.self_mask = None
            self.cross_mask = None
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, obs_features: torch.Tensor) -> torch.Tensor:
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        cond = torch.cat([self.step_emb(timestep)[:, None], self.obs_emb(obs_features)], dim=1)
        memory = self.cond_encoder(self.drop(cond + self.cond_pos_emb))
        x = self.drop(self.input_emb(sample) + self.pos_emb)
        x = self.decoder(x, memory, tgt_mask=self.self_mask, memory_mask=self.cross_mask)
        return self.head(self.ln_f(x))


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(mask, float("-inf"))
