"""A training step captured once as a CUDA graph and replayed (``train.cuda_graph``).

Forward, loss, backward, gradient clipping and the optimiser step of the policies here are a
few thousand small kernels; launched one by one from Python they can cost more time than
they take to run. :class:`GraphedTrainStep` records them once and replays the recording.

Randomness stays per step: before each replay the step's generator and the global seed are
set exactly as the eager step sets them, and a replayed graph reads its Philox seed and offset
from those generators, so it draws what the eager step draws. The learning rate lives in a
device tensor that the scheduler fills between replays; the EMA update stays outside the graph
(its decay changes every step).
"""

from __future__ import annotations

import contextlib

import torch

from .policy import DiffusionPolicy
from .weight_versions import count_step


class GraphCaptureError(RuntimeError):
    """The step could not be recorded (an operation that synchronises with the host, say)."""


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Learning rates as tensors on ``device`` and ``capturable`` on, also after loading a saved state
    (which holds a float, or a tensor read onto the CPU: a graph would keep that value for good)."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor) or lr.device.type != device.type:
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        group["capturable"] = True


class GraphedTrainStep:
    """One optimisation step of ``policy`` as a CUDA graph; call it with a CPU batch and the step's seeds."""

    def __init__(self, policy: DiffusionPolicy, optimizer: torch.optim.Optimizer, grad_clip: float,
                 autocast_dtype: torch.dtype | None) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        self.generator = torch.Generator(device=policy.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch: dict | None = None  # the graph's input tensors
        self.loss: torch.Tensor | None = None  # and its output

    def _step(self) -> torch.Tensor:
        autocast = (torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            loss = self.policy(self.batch, self.generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        return loss

    def _copy_in(self, batch: dict) -> None:
        for key, value in batch["obs"].items():
            self.batch["obs"][key].copy_(value, non_blocking=True)
        self.batch["action"].copy_(batch["action"], non_blocking=True)

    def capture(self, batch: dict) -> None:
        """Warm up on a side stream (lazy initialisation, cuDNN autotuning), undo the warm-up's updates in
        place, and record the step. Leaves parameters and optimiser state as they were, also when it fails
        (then with :class:`GraphCaptureError`)."""
        device = self.policy.device
        params = list(self.policy.parameters())
        try:
            self.batch = {"obs": {k: v.to(device).clone() for k, v in batch["obs"].items()},
                          "action": batch["action"].to(device).clone()}
            saved_params = [p.detach().clone() for p in params]
            saved_state = {p: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
                           for p, s in self.optimizer.state.items()}
        except RuntimeError as exc:  # out of memory, say: nothing changed yet
            raise GraphCaptureError(f"no memory to prepare the CUDA graph of the training step: {exc}") from exc
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
        except RuntimeError as exc:
            raise GraphCaptureError(f"warm-up for the CUDA graph of the training step failed: {exc}") from exc
        finally:
            self._restore(params, saved_params, saved_state)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        try:
            with torch.cuda.graph(graph):
                self.loss = self._step()
        except RuntimeError as exc:
            self.optimizer.zero_grad(set_to_none=True)
            raise GraphCaptureError(f"CUDA graph capture of the training step failed: {exc}") from exc
        self.graph = graph

    def _restore(self, params: list[torch.Tensor], saved_params: list[torch.Tensor], saved_state: dict) -> None:
        """Parameters and optimiser state back to ``saved_*``, in place (the graph records these very tensors)."""
        with torch.no_grad():
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
            for p, state in self.optimizer.state.items():
                for key, value in state.items():
                    if not isinstance(value, torch.Tensor):
                        continue
                    if p in saved_state:
                        value.copy_(saved_state[p][key])
                    else:  # the state a fresh optimiser creates on its first step
                        value.zero_()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, batch: dict, seed: int, global_seed: int) -> torch.Tensor:
        """Run one step on ``batch`` (CPU tensors); returns the loss (a device tensor, overwritten next step)."""
        if self.graph is None:
            self.capture(batch)
        self._copy_in(batch)
        self.generator.manual_seed(seed)
        torch.manual_seed(global_seed)
        self.graph.replay()
        count_step(self.optimizer)  # the replayed optimiser step ran no step hook: derived weight copies see it here
        return self.loss
