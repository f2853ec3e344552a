"""Precomputed sampler updates: diffusers' DDIM / DDPM ``step`` as per-step coefficient tensors.

``scheduler.step`` costs a few hundred microseconds of Python per denoising step (index
look-ups, scalar tensors, output dataclass). A :class:`SamplingPlan` reads the same
``alphas_cumprod`` from the same diffusers scheduler once, for one list of timesteps, and
applies the update as a handful of tensor operations, with no host synchronisation (so it
can also be captured in a CUDA graph when it draws no noise). Supported: epsilon prediction,
optional clipping of the predicted clean sample, DDIM with ``eta = 0`` and DDPM with
``fixed_small`` variance; :func:`plan_supported` says whether a scheduler qualifies.
Equality with ``scheduler.step`` is tested (1e-5 absolute and relative, fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler


def plan_supported(scheduler: DDIMScheduler | DDPMScheduler) -> bool:
    """Whether :class:`SamplingPlan` reproduces ``scheduler.step`` for this configuration."""
    cfg = scheduler.config
    if cfg.prediction_type != "epsilon" or cfg.thresholding:
        return False
    if isinstance(scheduler, DDPMScheduler):
        return cfg.variance_type == "fixed_small"
    return isinstance(scheduler, DDIMScheduler)


@dataclass
class SamplingPlan:
    """Per-step coefficients for ``timesteps`` of a scheduler whose ``set_timesteps`` was called.

    Update at step ``i`` (``eps`` the predicted noise, ``x`` the current sample)::

        x0 = clip((x - sqrt(1 - a_t) * eps) / sqrt(a_t))
        x  = c_x0 * x0 + c_x * x + c_eps * eps + std * noise      (noise only where std > 0)
    """

    timesteps: torch.Tensor  # (K,) long
    sqrt_beta: torch.Tensor  # (K,) sqrt(1 - a_t)
    sqrt_alpha: torch.Tensor  # (K,) sqrt(a_t)
    c_x0: torch.Tensor
    c_x: torch.Tensor
    c_eps: torch.Tensor
    std: torch.Tensor
    noisy: list[bool]  # whether step i draws noise (known on the host: no synchronisation)
    clip: float | None

    @classmethod
    def from_scheduler(cls, scheduler: DDIMScheduler | DDPMScheduler, timesteps: torch.Tensor) -> SamplingPlan:
        """Coefficients for ``timesteps`` (a suffix of ``scheduler.timesteps``), by diffusers' formulas."""
        if not plan_supported(scheduler):
            raise ValueError(f"no precomputed plan for {type(scheduler).__name__} with {dict(scheduler.config)}")
        cfg = scheduler.config
        alphas = scheduler.alphas_cumprod.detach().cpu().double()  # add_noise leaves it on the policy's device
        ts = [int(t) for t in timesteps]
        a_t = alphas[ts]
        if isinstance(scheduler, DDIMScheduler):
            stride = cfg.num_train_timesteps // scheduler.num_inference_steps
            final = float(scheduler.final_alpha_cumprod)
            a_prev = torch.tensor([float(alphas[t - stride]) if t - stride >= 0 else final for t in ts], dtype=torch.float64)
            c_x0, c_x, c_eps = a_prev.sqrt(), torch.zeros_like(a_t), (1 - a_prev).sqrt()
            std = torch.zeros_like(a_t)
        else:
            all_ts = [int(t) for t in scheduler.timesteps]
            prev = [all_ts[all_ts.index(t) + 1] if all_ts.index(t) + 1 < len(all_ts) else -1 for t in ts]
            a_prev = torch.tensor([float(alphas[p]) if p >= 0 else 1.0 for p in prev], dtype=torch.float64)
            beta_t, beta_prev = 1 - a_t, 1 - a_prev
            cur_alpha = a_t / a_prev
            cur_beta = 1 - cur_alpha
            c_x0 = a_prev.sqrt() * cur_beta / beta_t
            c_x = cur_alpha.sqrt() * beta_prev / beta_t
            c_eps = torch.zeros_like(a_t)
            var = (beta_prev / beta_t * cur_beta).clamp(min=1e-20)
            std = torch.where(torch.tensor(ts) > 0, var.sqrt(), torch.zeros_like(var))
        device = timesteps.device

        def f32(v: torch.Tensor) -> torch.Tensor:
            return v.to(device=device, dtype=torch.float32)

        return cls(
            timesteps=timesteps.to(device=device, dtype=torch.long),
            sqrt_beta=f32((1 - a_t).sqrt()),
            sqrt_alpha=f32(a_t.sqrt()),
            c_x0=f32(c_x0),
            c_x=f32(c_x),
            c_eps=f32(c_eps),
            std=f32(std),
            noisy=[t > 0 and isinstance(scheduler, DDPMScheduler) for t in ts],
            clip=float(cfg.clip_sample_range) if cfg.clip_sample else None,
        )

    def __len__(self) -> int:
        return len(self.noisy)

    @property
    def draws_noise(self) -> bool:
        return any(self.noisy)

    def coefficient_table(self) -> tuple[torch.Tensor, ...]:
        """``(sqrt_beta, sqrt_alpha, c_x0, c_x, c_eps)``, each ``(K,)``: the noise-free update's coefficients."""
        return self.sqrt_beta, self.sqrt_alpha, self.c_x0, self.c_x, self.c_eps

    def coefficients(self, i: int) -> tuple[torch.Tensor, ...]:
        """The :meth:`coefficient_table` entries of step ``i``."""
        return tuple(t[i] for t in self.coefficient_table())

    def step(self, i: int, eps: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The sample after step ``i``; draws noise like diffusers does (same generator, same order)."""
        out = noise_free_update(eps, x, self.coefficients(i), self.clip)
        if not self.noisy[i]:  # DDIM, or the last DDPM step
            return out
        gen_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
        return out + self.std[i] * noise


def noise_free_update(eps: torch.Tensor, x: torch.Tensor, coefficients: tuple[torch.Tensor, ...],
                      clip: float | None) -> torch.Tensor:
    """The update of :meth:`SamplingPlan.step` before any noise, from one step's :meth:`SamplingPlan.coefficients`."""
    sqrt_beta, sqrt_alpha, c_x0, c_x, c_eps = coefficients
    eps = eps.float()
    x0 = (x - sqrt_beta * eps) / sqrt_alpha
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return c_x0 * x0 + c_x * x + c_eps * eps
