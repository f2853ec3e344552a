"""The UNet's denoising step through ONNX Runtime, for CPU inference.

A denoising step of the small UNets is a few hundred small operators; in eager PyTorch on a
CPU most of its time is per-operator dispatch. :class:`OrtUnetStep` exports
:meth:`FastUnet1D.step <dp_core.models.unet1d_fast.FastUnet1D.step>` (time-major products, the
FiLM conditioning as inputs) once per input shape with ``torch.onnx.export`` and runs it in an
ONNX Runtime session, which executes the same graph with far less overhead per operator.

The weights are baked into the exported graph: a session is rebuilt when a parameter changes
(new storage or an in-place update such as ``load_state_dict``). Outputs equal the PyTorch step
within float rounding (tested to 1e-4 in normalised action units over whole chunks).
"""

from __future__ import annotations

import logging
import time

import torch

from .models.unet1d_fast import FastUnet1D

log = logging.getLogger(__name__)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Step(torch.nn.Module):
    """``FastUnet1D.step`` with the FiLM ``(scale, bias)`` pairs as flat positional inputs."""

    def __init__(self, unet: FastUnet1D) -> None:
        super().__init__()
        self.fast = unet
        self.module = unet.unet  # registers the weights, so that the export sees them as parameters

    def forward(self, x: torch.Tensor, *films: torch.Tensor) -> torch.Tensor:
        pairs = [(films[i], films[i + 1]) for i in range(0, len(films), 2)]
        return self.fast.step(x, pairs)


class OrtUnetStep:
    """``condition`` and ``step`` of a :class:`FastUnet1D`, the step run by ONNX Runtime (CPU tensors only)."""

    def __init__(self, unet: FastUnet1D, threads: int | None = None) -> None:
        import onnxruntime  # the optional dependency is needed only when this backend is chosen

        self._ort = onnxruntime
        self.unet = unet
        self.threads = threads
        self._sessions: dict[tuple, object] = {}
        self._session = None

    def _weights_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.unet.unet.parameters())

    def _build(self, x: torch.Tensor, flat: list[torch.Tensor]):
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            args = tuple(t.clone() for t in (x, *flat))  # ordinary tensors: the exporter traces them
            program = torch.onnx.export(_Step(self.unet).eval(), args, dynamo=True, optimize=True, verbose=False,
                                        input_names=[f"in{i}" for i in range(len(args))], output_names=["eps"])
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = self._ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        log.info("UNet step exported to ONNX Runtime in %.1f s (input %s)", time.perf_counter() - start, tuple(x.shape))
        return session

    def condition(self, timesteps: torch.Tensor, global_cond: torch.Tensor, sample: torch.Tensor) -> list[dict]:
        """Per step, the ONNX Runtime inputs of ``FastUnet1D.condition`` (converted once per chunk).

        Also picks the session for ``sample``'s shape and the current weights, exporting if needed.
        """
        if sample.device.type != "cpu":
            raise ValueError(f"the ONNX Runtime backend runs on the CPU; the policy is on {sample.device}")
        steps = [[t.detach().contiguous() for pair in films for t in pair]
                 for films in self.unet.condition(timesteps, global_cond)]
        key = (tuple(sample.shape), tuple(tuple(t.shape) for t in steps[0]), sample.dtype, self._weights_key())
        self._session = self._sessions.get(key)
        if self._session is None:
            self._sessions.clear()  # a stale graph holds old weights
            self._session = self._sessions[key] = self._build(sample, steps[0])
        return [{f"in{i + 1}": t.numpy() for i, t in enumerate(flat)} for flat in steps]

    def __call__(self, x: torch.Tensor, feeds: dict) -> torch.Tensor:
        """Predicted noise for ``x`` at the step whose inputs :meth:`condition` gave as ``feeds``."""
        return torch.from_numpy(self._session.run(None, {"in0": x.detach().contiguous().numpy(), **feeds})[0])
