"""The fast inference path of :class:`~dp_core.policy.DiffusionPolicy` (the reference path stays in policy.py).

Same function as the reference sampler, computed with less overhead:

* observations encoded once per chunk (as in the reference);
* the sampler update from precomputed coefficients (:class:`~dp_core.sampling.SamplingPlan`),
  cached per step count and device;
* for the UNet, the FiLM conditioning of all steps in one pass and convolutions as
  time-major products (:class:`~dp_core.models.unet1d_fast.FastUnet1D`);
* the image encoders in channels-last layout (measured 1.8x faster on this CPU, same output);
* on CUDA: optional bf16 (autocast, and the UNet's denoising steps on a bf16 copy of its
  weights, kept current, so that each step reads half the bytes and casts none), optional int8
  weights for the UNet's deep convolutions on top of that (a quarter of the fp32 bytes), and the whole
  encode-and-denoise call captured once per input shape as a CUDA graph and replayed (loops
  that draw noise inside, i.e. DDPM, run uncaptured); the UNet's few-row products as split-K
  Triton kernels (:mod:`~dp_core.models.skinny_matmul`);
* optionally ``torch.compile`` of the encoder and of the UNet step with the sampler update;
* on a CPU, optionally the whole sampling loop in ONNX Runtime (:mod:`~dp_core.ort_step`).

With the same generator, the fp32 result equals the reference within 1e-4 in normalised
action units (``tests/unit/test_fast_inference.py``); bf16 is looser (about 1e-2), int8 within
``INT8_TOLERANCE`` on the bundled model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .models import ConditionalUnet1D
from .models import skinny_matmul
from .models.unet1d_fast import FastUnet1D, SplitK, quantize_convs
from .ort_step import OrtUnetStep
from .sampling import SamplingPlan, noise_free_update, plan_supported
from .weight_versions import module_tensors, weights_key

if TYPE_CHECKING:
    from .policy import DiffusionPolicy

FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 5e-2
INT8_TOLERANCE = 5e-2


@dataclass
class InferenceOptions:
    """How :meth:`DiffusionPolicy.predict_action` samples.

    ``fast``: the fast path (False: the reference path, diffusers' ``step`` and the plain modules).
    ``precision``: ``bf16`` runs the networks under bf16 autocast on CUDA (elsewhere ``configure_inference`` warns
    and samples in fp32); ``int8``
    gives the UNet's deep convolutions int8 weights, one scale per output channel (outputs within
    ``INT8_TOLERANCE`` rather than the fp32 tolerance): on a CPU on the ONNX Runtime backend, with
    activations quantised per call (:mod:`dp_core.ort_step`); on CUDA on the torch backend, as bf16 plus
    int8 weights read by the Triton products (activations stay bf16; where Triton does not run, or for more
    than 16 rows, each product widens its weights first: correct, not fast).
    ``cuda_graph``: capture and replay noise-free sampling calls on CUDA.
    ``channels_last``: convert the image encoders' weights to channels-last layout on first use
    (leave it off for a policy that is being trained).
    ``compile``: the observation encoder and the UNet's denoising step (with the sampler update, for
    noise-free plans) through ``torch.compile`` (inductor fuses their many small operators; compiling
    takes a minute or more on first use, so it is off by default).
    ``split_k``: on CUDA, the UNet's products with few rows (batch x horizon) and a deep reduction as
    partial products over slices of the reduction, summed (:func:`~dp_core.models.unet1d_fast.split_k_factor`);
    ``True``: one batched product over the slices, then their sum; ``triton``: one Triton kernel per product
    (:mod:`~dp_core.models.skinny_matmul`); ``auto``: see :meth:`FastSampler._split_k`.
    ``backend``: ``onnxruntime`` runs the UNet's denoising step in ONNX Runtime (CPU only; the graph is
    written from the weights on first use, well under a second), :mod:`dp_core.ort_step`; ``auto`` picks it for a UNet policy on the CPU
    when onnxruntime is installed and ``compile`` is off, else ``torch``.
    """

    fast: bool = True
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    cuda_graph: bool = True
    channels_last: bool = True
    compile: bool = False
    split_k: bool | Literal["auto", "triton"] = "auto"
    backend: Literal["torch", "onnxruntime", "auto"] = "torch"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'int8', got {self.precision!r}")
        if self.split_k not in (True, False, "auto", "triton"):
            raise ValueError(f"split_k must be true, false, 'auto' or 'triton', got {self.split_k!r}")
        if self.backend not in ("torch", "onnxruntime", "auto"):
            raise ValueError(f"backend must be 'torch', 'onnxruntime' or 'auto', got {self.backend!r}")
        if self.backend == "onnxruntime" and self.compile:
            raise ValueError("compile applies to the torch backend, not to onnxruntime")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    obs: dict[str, torch.Tensor]
    x: torch.Tensor
    out: torch.Tensor


class FastSampler:
    """Samples normalised action chunks for ``policy`` on the fast path."""

    def __init__(self, policy: DiffusionPolicy, options: InferenceOptions, ort_fallback: bool = False) -> None:
        """``ort_fallback``: if the ONNX Runtime step cannot be built, warn and sample with torch (backend auto)."""
        self.policy = policy
        self.options = options
        self.ort_fallback = ort_fallback
        self.unet = FastUnet1D(policy.denoiser) if isinstance(policy.denoiser, ConditionalUnet1D) else None
        self._condition = self._unet_step = None  # per-chunk FiLM conditioning and the per-step network
        if self.unet is not None:
            self._use_torch_step()
            if options.backend == "onnxruntime":
                ort = OrtUnetStep(self.unet, int8=options.precision == "int8")
                self._condition, self._unet_step = ort.condition, ort
        self._bf16: tuple[FastUnet1D, tuple] | None = None  # (bf16 copy, versions of the weights it holds)
        self._compiled: tuple[FastUnet1D, Callable] | None = None  # the UNet step
        self._compiled_update: tuple[FastUnet1D, Callable] | None = None  # step + noise-free sampler update
        self._compiled_encode: Callable | None = None
        self._step_index: dict[int, list[torch.Tensor]] = {}  # id(plan) -> index tensor (1,) of each step
        self._plans: dict[tuple, SamplingPlan] = {}
        self._graphs: dict[tuple, _Graph] = {}
        self._channels_last_done = False
        self._graph_failed = False
        # Modules as of now, walked at every chunk for the weights' identities (Module.parameters() costs
        # about 0.6 ms per walk for the paper-size image policy in Python; this walk about 0.05 ms).
        # Submodules added later are not seen: configure_inference again after changing the architecture.
        self._modules = list(policy.modules())
        self._unet_modules = list(self.unet.unet.modules()) if self.unet is not None else []

    def _use_torch_step(self) -> None:
        self._condition, self._unet_step = (lambda plan, cond, _: self.unet.condition(plan.timesteps, cond)), self._torch_step

    def _step_unet(self) -> FastUnet1D:
        """The UNet of the denoising steps: with bf16 or int8 on CUDA a bf16 copy of the weights (with int8
        weights for the deep convolutions), updated in place (so that captured graphs stay valid) whenever a
        weight of the module changed."""
        self.unet.split_k = self._split_k()
        if not (self._half() and self.policy.device.type == "cuda"):
            return self.unet
        versions = weights_key(module_tensors(self._unet_modules, buffers=False))
        if self._bf16 is None or self._bf16[1] != versions:
            params = list(self.unet.unet.parameters())
            with torch.no_grad():
                if self._bf16 is None or next(self._bf16[0].unet.parameters()).device != params[0].device:
                    half = FastUnet1D(copy.deepcopy(self.unet.unet).to(torch.bfloat16).requires_grad_(False).eval())
                else:
                    half = self._bf16[0]
                    for dst, src in zip(half.unet.parameters(), params):
                        dst.copy_(src)
                if self.options.precision == "int8":
                    quantize_convs(half.unet, self.unet.unet)
            self._bf16 = (half, versions)
        self._bf16[0].split_k = self.unet.split_k
        return self._bf16[0]

    def _split_k(self) -> SplitK:
        """``options.split_k`` resolved for this device: ``auto`` = the Triton kernel for fp32 and int8, and for
        bf16 under ``compile`` (which fuses the sum of its partial products); where the kernel does not work
        (:func:`~dp_core.models.skinny_matmul.works`), the batched split for fp32 only."""
        if self.policy.device.type != "cuda":
            return False
        if self.options.split_k != "auto":
            return self.options.split_k
        fp32 = self.options.precision == "fp32"
        if skinny_matmul.works(self.policy.device):
            return "triton" if fp32 or self.options.precision == "int8" or self.options.compile else False
        return fp32

    def _half(self) -> bool:
        """Whether the networks run in bf16 on CUDA (precision bf16, or int8 on the torch backend)."""
        return self.options.precision == "bf16" or (self.options.precision == "int8" and self.options.backend == "torch")

    def _torch_step(self, x: torch.Tensor, films: list) -> torch.Tensor:
        unet = self._step_unet()
        if not self.options.compile:
            return unet.step(x, films)
        if self._compiled is None or self._compiled[0] is not unet:
            self._compiled = (unet, torch.compile(unet.step, dynamic=False))
        return self._compiled[1](x, films)

    def _compiled_step_update(self, plan: SamplingPlan, i: int, x: torch.Tensor, films: list) -> torch.Tensor:
        """Step ``i`` of a noise-free plan with the UNet step and the sampler update compiled together (one
        compiled function for every step: the step's coefficients are gathered on the device by a one-element
        index tensor; indexing by a 0-d tensor would read it on the host, which a CUDA graph capture forbids)."""
        unet = self._step_unet()
        if self._compiled_update is None or self._compiled_update[0] is not unet:
            def step_update(x: torch.Tensor, films: list, index: torch.Tensor, table: tuple, clip: float | None) -> torch.Tensor:
                return noise_free_update(unet.step(x, films), x, tuple(t.index_select(0, index) for t in table), clip)

            self._compiled_update = (unet, torch.compile(step_update, dynamic=False))
        if id(plan) not in self._step_index:
            self._step_index[id(plan)] = [torch.tensor([k], device=x.device) for k in range(len(plan))]
        return self._compiled_update[1](x, films, self._step_index[id(plan)][i], plan.coefficient_table(), plan.clip)

    def _encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.options.compile:
            return self.policy.encode(obs)
        if self._compiled_encode is None:
            self._compiled_encode = torch.compile(self.policy.encode, dynamic=False)
        return self._compiled_encode(obs)

    def _films(self, plan: SamplingPlan, cond: torch.Tensor, x: torch.Tensor) -> list:
        try:
            return self._condition(plan, cond, x)
        except Exception as exc:  # building the ONNX Runtime step failed
            if not (self.ort_fallback and isinstance(self._unet_step, OrtUnetStep)):
                raise
            warnings.warn(f"ONNX Runtime backend unavailable for this policy, sampling with torch in fp32: {exc!r}",
                          RuntimeWarning, stacklevel=2)
            self._use_torch_step()
            precision = "fp32" if self.options.precision == "int8" else self.options.precision  # no int8 on a CPU in torch
            self.options = self.policy.inference_options = dataclasses.replace(self.options, backend="torch",
                                                                               precision=precision)
            return self._condition(plan, cond, x)

    def current(self) -> bool:
        """Whether this sampler still evaluates the policy's denoiser (False once it was replaced)."""
        return self.unet is None or self.policy.denoiser is self.unet.unet

    @staticmethod
    def supported(policy: DiffusionPolicy) -> bool:
        return policy.cfg.kind == "diffusion" and plan_supported(policy.sampler)

    def _plan(self, num_steps: int, warm_steps: int | None) -> SamplingPlan:
        """Plan for ``num_steps`` scheduler steps, keeping only the last ``warm_steps`` when given."""
        device = self.policy.device
        key = (num_steps, warm_steps, device)
        if key not in self._plans:
            sampler = self.policy.sampler
            sampler.set_timesteps(num_steps, device=device)
            timesteps = sampler.timesteps if warm_steps is None else sampler.timesteps[-warm_steps:]
            self._plans[key] = SamplingPlan.from_scheduler(sampler, timesteps)
        return self._plans[key]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.policy.device.type == "cuda" and self._half():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _denoise(self, plan: SamplingPlan, x: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.unet is not None:
            films = self._films(plan, cond, x)
            if isinstance(self._unet_step, OrtUnetStep) and not plan.draws_noise:
                return self._unet_step.sample(plan, x, films)  # the whole loop in one ONNX Runtime run
            if self.options.compile and not plan.draws_noise:
                for i in range(len(plan)):
                    x = self._compiled_step_update(plan, i, x, films[i])
                return x
            for i in range(len(plan)):
                x = plan.step(i, self._unet_step(x, films[i]), x, generator)
            return x
        for i in range(len(plan)):
            x = plan.step(i, self.policy.denoiser(x, plan.timesteps[i], cond), x, generator)
        return x

    def _encode_and_denoise(self, plan: SamplingPlan, generator: torch.Generator | None) -> Callable:
        def run(obs: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self._denoise(plan, x, self._encode(obs).float(), generator)

        return run

    def sample(
        self,
        obs: dict[str, torch.Tensor],
        warm_start: torch.Tensor | None,
        generator: torch.Generator | None,
        num_inference_steps: int | None,
    ) -> torch.Tensor:
        """Normalised chunk ``(B, Tp, A)``; draws noise exactly as the reference path does."""
        policy, d = self.policy, self.policy.cfg.diffusion
        device = policy.device
        if self.options.precision == "int8" and self.options.backend == "torch" and device.type != "cuda":
            raise ValueError(f"precision 'int8' on the torch backend runs on CUDA, this policy is on {device}: "
                             "on a CPU use backend 'onnxruntime' or 'auto'")
        if self.options.channels_last and not self._channels_last_done and policy.cfg.shape_meta.rgb_keys:
            with torch.inference_mode(False):  # weights made here must stay trainable (sample runs in inference mode)
                policy.obs_encoder.to(memory_format=torch.channels_last)
            self._channels_last_done = True
        b = next(iter(obs.values())).shape[0]
        shape = (b, policy.cfg.horizon, policy.cfg.shape_meta.action.dim)
        noise = policy._noise(shape, generator)
        if warm_start is None:
            plan = self._plan(num_inference_steps or d.num_inference_steps, None)
            x = noise
        else:
            steps = d.warm_start_steps
            plan = self._plan(max(steps, round(steps / d.warm_start_strength)), steps)
            guess = policy.normalizer.action(warm_start.to(device).float()).clamp(-1.0, 1.0)
            x = policy.sampler.add_noise(guess, noise, plan.timesteps[:1])
        run = self._encode_and_denoise(plan, generator)
        if self.unet is not None and self._unet_step == self._torch_step:
            self._step_unet()  # refresh a bf16 copy of changed weights here: a replayed graph runs no Python
        # Graphs for the UNet only: the transformer's attention checks its masks on the host (a sync),
        # and an aborted capture leaves the CUDA generator unusable.
        if (device.type != "cuda" or not self.options.cuda_graph or plan.draws_noise or self._graph_failed
                or self.unet is None):
            return run(obs, x)
        try:
            return self._replay(plan, run, obs, x)
        except RuntimeError as exc:  # capture refused (an operator that syncs): stay correct, uncaptured
            warnings.warn(f"CUDA graph capture failed, sampling without graphs: {exc}", RuntimeWarning, stacklevel=2)
            self._graph_failed = True
            self._graphs.clear()
            return run(obs, x)

    def _replay(self, plan: SamplingPlan, run: Callable, obs: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        weights = tuple(t.data_ptr() for t in module_tensors(self._modules))
        key = (id(plan), tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(obs.items())), tuple(x.shape), weights,
               self.options.precision)
        entry = self._graphs.get(key)
        if entry is None:
            static_obs = {k: v.to(self.policy.device).clone() for k, v in obs.items()}
            static_x = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside capture (lazy initialisation, autotuning)
                for _ in range(2):
                    run(static_obs, static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run(static_obs, static_x)
            entry = self._graphs[key] = _Graph(graph, static_obs, static_x, out)
        for k, v in obs.items():
            entry.obs[k].copy_(v, non_blocking=True)
        entry.x.copy_(x)
        entry.graph.replay()
        return entry.out.clone()
