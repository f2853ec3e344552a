"""The Diffusion Policy: To observations in, a Tp-step action chunk out.

Timeline (To = 2, Tp = 16, Ta = 8)::

    obs:      |o o|
    chunk:    |a a a a a a a a a a a a a a a a|
    executed:    |a a a a a a a a|           (Ta actions from index To - 1)

Training: epsilon prediction under a DDPM schedule (diffusers). Inference: DDIM or
DDPM from pure noise, or a warm start from the previous chunk (shifted, re-noised to
an intermediate step, then denoised with fewer steps). Observations are encoded once
per chunk, never once per denoising step. ``kind: regression`` turns the same network
into a plain MSE regressor (input zeros, step 0) as a baseline.

Sampling runs on the fast path of fast_inference.py by default (same result within a
tested tolerance); ``configure_inference(InferenceOptions(fast=False))`` selects the
reference path below (diffusers' ``step``, the plain modules).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from .config import PolicyConfig
from .fast_inference import FastSampler, InferenceOptions
from .ort_step import onnxruntime_available
from .models import ConditionalUnet1D, ObsEncoder, TransformerDenoiser
from .normalizer import Normalizer


class DiffusionPolicy(nn.Module):
    """Conditional denoiser over action chunks, with its normaliser and obs encoder."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sm = cfg.shape_meta
        self.normalizer = Normalizer({k: sm.obs[k].shape[0] for k in sm.low_dim_keys}, sm.action.dim)
        self.obs_encoder = ObsEncoder(sm, cfg.vision)
        feat = self.obs_encoder.feature_dim
        if cfg.denoiser == "unet":
            u = cfg.unet
            self.denoiser: nn.Module = ConditionalUnet1D(
                sm.action.dim, feat * cfg.n_obs_steps, u.down_dims, u.kernel_size, u.n_groups, u.step_embed_dim
            )
        else:
            t = cfg.transformer
            self.denoiser = TransformerDenoiser(
                sm.action.dim, feat, cfg.horizon, cfg.n_obs_steps,
                t.n_layer, t.n_head, t.n_emb, t.p_drop_emb, t.p_drop_attn, t.causal_attn,
            )
        d = cfg.diffusion
        sched = dict(
            num_train_timesteps=d.num_train_timesteps,
            beta_schedule=d.beta_schedule,
            prediction_type=d.prediction_type,
            clip_sample=d.clip_sample,
        )
        self.train_scheduler = DDPMScheduler(**sched)
        self.sampler = DDIMScheduler(**sched, set_alpha_to_one=True) if d.inference_scheduler == "ddim" else DDPMScheduler(**sched)
        self.configure_inference(InferenceOptions())

    def configure_inference(self, options: InferenceOptions) -> None:
        """Choose the sampling path (fast or reference) and its options (``backend: auto`` is resolved here)."""
        self._requested_options = options
        unet = self.cfg.denoiser == "unet" and self.cfg.kind == "diffusion"
        auto = options.backend == "auto"
        if auto:
            ort = options.fast and unet and self.device.type == "cpu" and not options.compile and onnxruntime_available()
            options = dataclasses.replace(options, backend="onnxruntime" if ort else "torch")
        if options.backend == "onnxruntime":
            if not (options.fast and unet):
                raise ValueError("inference backend 'onnxruntime' runs the fast path of a diffusion UNet policy")
            if self.device.type != "cpu":
                raise ValueError(f"inference backend 'onnxruntime' runs on the CPU; this policy is on {self.device}")
            if not onnxruntime_available():
                raise ValueError("inference backend 'onnxruntime' needs the onnxruntime package (requirements/core.txt)")
        elif options.precision == "bf16" and not (options.fast and self.device.type == "cuda"):
            warnings.warn(f"precision 'bf16' applies on the fast path on CUDA; sampling in fp32 on {self.device}",
                          RuntimeWarning, stacklevel=2)
            options = dataclasses.replace(options, precision="fp32")
        elif options.precision == "int8" and not (options.fast and unet and self.device.type == "cuda"):
            raise ValueError("precision 'int8' runs the fast path of a UNet diffusion policy: on the CPU with the "
                             f"ONNX Runtime backend (onnxruntime installed), or on CUDA; this policy is on {self.device}")
        self.inference_options = options
        self._fast = FastSampler(self, options, ort_fallback=auto) if options.fast and FastSampler.supported(self) else None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the sampler out (it holds ONNX Runtime sessions and CUDA graphs of this
        policy's tensors); the copy builds its own with the same options."""
        return {**self.__dict__, "_fast": None}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.configure_inference(self._requested_options)

    @property
    def uses_fast_path(self) -> bool:
        return self._fast is not None

    @property
    def device(self) -> torch.device:
        return self.normalizer.action.scale.device

    def encode(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw observations ``{key: (B, To, ...)}`` -> the denoiser's condition."""
        feats = self.obs_encoder(self.normalizer.normalize_obs(obs), generator)
        return feats.flatten(1) if self.cfg.denoiser == "unet" else feats

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device).to(self.device)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch = {"obs": {key: (B, To, ...)}, "action": (B, Tp, A)}`` in raw units."""
        action = self.normalizer.action(batch["action"].float())
        cond = self.encode(batch["obs"], generator)
        b = action.shape[0]
        if self.cfg.kind == "regression":
            zero_t = torch.zeros(b, dtype=torch.long, device=action.device)
            return F.mse_loss(self.denoiser(torch.zeros_like(action), zero_t, cond), action)
        noise = self._noise(tuple(action.shape), generator)
        gen_device = generator.device if generator is not None else self.device
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (b,), generator=generator, device=gen_device
        ).to(action.device)
        noisy = self.train_scheduler.add_noise(action, noise, t)
        return F.mse_loss(self.denoiser(noisy, t, cond), noise)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss (so that DistributedDataParallel hooks see the call)."""
        return self.compute_loss(batch, generator)

    @torch.inference_mode()
    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        warm_start: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sample a chunk.

        Args:
            obs: raw observations ``{key: (B, To, ...)}``.
            warm_start: ``(B, Tp, A)`` initial guess in action units (the previous chunk
                already shifted to this step); ``None`` samples from pure noise.
            generator: for reproducible sampling.
            num_inference_steps: overrides the configured cold-start step count.

        Returns:
            ``action_pred`` (B, Tp, A), the whole chunk; ``action`` (B, Ta, A), the part to execute.
        """
        if self._fast is not None and not self._fast.current():  # the denoiser was replaced: sample the new one
            self.configure_inference(self._requested_options)
        if self._fast is not None:
            x = self._fast.sample(obs, warm_start, generator, num_inference_steps)
        else:
            cond = self.encode(obs)
            b = cond.shape[0]
            shape = (b, self.cfg.horizon, self.cfg.shape_meta.action.dim)
            if self.cfg.kind == "regression":
                zero_t = torch.zeros(b, dtype=torch.long, device=self.device)
                x = self.denoiser(torch.zeros(shape, device=self.device), zero_t, cond)
            else:
                x = self._sample(shape, cond, warm_start, generator, num_inference_steps)
        pred = self.normalizer.action.unnormalize(x)
        start = self.cfg.n_obs_steps - 1
        return {"action_pred": pred, "action": pred[:, start : start + self.cfg.n_action_steps]}

    def _sample(
        self,
        shape: tuple[int, ...],
        cond: torch.Tensor,
        warm_start: torch.Tensor | None,
        generator: torch.Generator | None,
        num_inference_steps: int | None,
    ) -> torch.Tensor:
        d = self.cfg.diffusion
        noise = self._noise(shape, generator)
        if warm_start is None:
            self.sampler.set_timesteps(num_inference_steps or d.num_inference_steps, device=self.device)
            timesteps = self.sampler.timesteps
            x = noise
        else:
            steps = d.warm_start_steps
            self.sampler.set_timesteps(max(steps, round(steps / d.warm_start_strength)), device=self.device)
            timesteps = self.sampler.timesteps[-steps:]
            guess = self.normalizer.action(warm_start.to(self.device).float()).clamp(-1.0, 1.0)
            x = self.sampler.add_noise(guess, noise, timesteps[:1])
        for t in timesteps:
            eps = self.denoiser(x, t, cond)
            x = self.sampler.step(eps, t, x, generator=generator).prev_sample
        return x


def shift_chunk(chunk: torch.Tensor, steps: int) -> torch.Tensor:
    """Advance a ``(B, Tp, A)`` chunk by ``steps``, padding the tail with its last action."""
    if steps <= 0:
        return chunk
    tail = chunk[:, -1:].expand(-1, min(steps, chunk.shape[1]), -1)
    return torch.cat([chunk[:, steps:], tail], dim=1)
