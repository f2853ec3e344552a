"""The UNet's denoising step as an ONNX Runtime graph, for CPU inference.

A denoising step of the small UNets is a few hundred small operators; in eager PyTorch on a
CPU most of its time is per-operator dispatch. :class:`OrtUnetStep` writes the step of a
:class:`~dp_core.models.unet1d.ConditionalUnet1D` directly as an ONNX graph (no tracing or
export: built from the module's weights in well under a second) and runs it in an ONNX
Runtime session. The graph is laid out for ONNX Runtime's CPU kernels:

* activations channel-major ``(C, T)`` for one chunk, so that group norm is one
  ``InstanceNormalization`` between two free reshapes;
* a convolution is an im2col as a product with a constant 0/1 matrix (padding and stride
  included), then one ``Gemm`` in the orientation its CPU kernel is fastest at for a few time
  steps (time-major output rows), then one transpose back;
* the FiLM conditioning of every block (computed per chunk, for all steps at once, by
  :meth:`FastUnet1D.film_table <dp_core.models.unet1d_fast.FastUnet1D.film_table>`) is one input
  vector, split inside the graph;
* for noise-free plans (DDIM) the whole sampling loop, the sampler update included, is one ONNX
  ``Loop`` run per chunk (:meth:`OrtUnetStep.sample`), so no Python or PyTorch runs between steps.

The weights are baked into the graph: a session is rebuilt when a parameter changes (new
storage or an in-place update such as ``load_state_dict``). Outputs equal the PyTorch step
within float rounding (tested to 1e-4 in normalised action units over whole chunks).

Optionally (``int8``), the convolutions whose reduction is at least :data:`INT8_MIN_DEPTH` deep
(input channels x kernel) use int8 weights, one scale per output channel, and activations quantised
per call (ONNX Runtime's ``DynamicQuantizeMatMul``): about half the step time on a CPU. The
shallow ones stay fp32: quantising those (the first layers read the raw 2-D action) changed the
bundled state policy's score, the deep ones did not (``docs/performance.md``).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from .models.skinny_matmul import quantize_rows
from .models.unet1d import FiLMResBlock
from .models.unet1d_fast import INT8_MIN_DEPTH, FastUnet1D
from .sampling import SamplingPlan
from .weight_versions import module_tensors, weights_key

log = logging.getLogger(__name__)

OPSET = 20


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class _Graph:
    """Minimal ONNX graph writer: one output per node, initialisers from numpy arrays (equal arrays shared)."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._consts: dict[tuple, str] = {}
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: np.ndarray) -> str:
        value = value if value.flags.c_contiguous else value.copy()  # (ascontiguousarray would make 0-d 1-d)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            self._consts[key] = name = self._name("c")
            self.inits.append(self.numpy_helper.from_array(value, name))
        return self._consts[key]

    def shape(self, *dims: int) -> str:
        return self.const(np.array(dims, dtype=np.int64))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs) -> str | list[str]:
        names = [name] if name else [self._name("v") for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attrs))  # domain= passes through
        return names[0] if outputs == 1 else names


class _StepWriter:
    """Writes ``FastUnet1D.step`` for one sample of ``horizon`` steps as ONNX nodes."""

    def __init__(self, unet: FastUnet1D, int8: bool = False) -> None:
        self.unet = unet
        self.int8 = int8
        self.g = _Graph()
        self.one = self.g.const(np.ones(1, np.float32))

    # --- layers on channel-major (C, T) values --------------------------------------------
    def conv(self, x: str, t: int, conv: nn.Conv1d) -> tuple[str, int]:
        """``conv(x)``; returns the time-major ``(T_out, C_out)`` result and ``T_out``."""
        g = self.g
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        c_in, c_out = conv.in_channels, conv.out_channels
        weight = _np(conv.weight).reshape(c_out, c_in * k)  # columns (c, j)
        bias = g.const(_np(conv.bias))
        t_out = (t + 2 * p - k) // s + 1
        if not (k == 1 and s == 1 and p == 0):
            select = np.zeros((t, k * t_out), dtype=np.float32)  # column j * T_out + u reads x[u * s + j - p]
            for j in range(k):
                for u in range(t_out):
                    src = u * s + j - p
                    if 0 <= src < t:
                        select[src, j * t_out + u] = 1.0
            x = g.op("MatMul", x, g.const(select))  # (1, C_in, k * T_out)
        x = g.op("Reshape", x, g.shape(c_in * k, t_out))  # rows (c, j)
        if self.int8 and c_in * k >= INT8_MIN_DEPTH:
            return self._int8_product(x, weight, bias), t_out
        return g.op("Gemm", x, g.const(weight), bias, transA=1, transB=1), t_out

    def _int8_product(self, cols: str, weight: np.ndarray, bias: str) -> str:
        """``cols^T @ weight^T + bias`` with int8 weights (symmetric, per output channel)."""
        g = self.g
        q, scale = quantize_rows(torch.from_numpy(weight))
        rows = g.op("Transpose", cols, perm=[1, 0])
        return g.op("DynamicQuantizeMatMul", rows, g.const(q.numpy().T), g.const(scale.numpy()), "", bias,
                    domain="com.microsoft")

    def conv_cm(self, x: str, t: int, conv: nn.Conv1d) -> tuple[str, int]:
        y, t_out = self.conv(x, t, conv)
        return self.g.op("Transpose", y, perm=[1, 0]), t_out

    def conv_transpose(self, x: str, t: int, conv: nn.ConvTranspose1d) -> tuple[str, int]:
        """Transposed convolution, channel-major in and out."""
        g = self.g
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        c_out = conv.out_channels
        t_out = (t - 1) * s - 2 * p + k
        weight = _np(conv.weight).transpose(1, 2, 0).reshape(c_out * k, conv.in_channels)  # rows (o, j)
        z = g.op("MatMul", g.const(weight), x)  # (1, C_out * k, T)
        z = g.op("Reshape", z, g.shape(1, c_out, k * t))  # columns (j, t)
        scatter = np.zeros((k * t, t_out), dtype=np.float32)  # x[t] through tap j lands on t * s + j - p
        for j in range(k):
            for u in range(t):
                dst = u * s + j - p
                if 0 <= dst < t_out:
                    scatter[j * t + u, dst] = 1.0
        y = g.op("MatMul", z, g.const(scatter))
        return g.op("Add", y, g.const(_np(conv.bias)[:, None])), t_out

    def norm_mish(self, y_tm: str, t: int, norm: nn.GroupNorm) -> str:
        """``mish(group_norm(y))`` of a time-major ``(T, C)`` value; returns channel-major."""
        g = self.g
        c, groups = norm.num_channels, norm.num_groups
        x = g.op("Transpose", y_tm, perm=[1, 0])
        x = g.op("Reshape", x, g.shape(1, groups, (c // groups) * t))
        x = g.op("InstanceNormalization", x, g.const(np.ones(groups, np.float32)),
                 g.const(np.zeros(groups, np.float32)), epsilon=float(norm.eps))
        x = g.op("Reshape", x, g.shape(1, c, t))
        x = self.affine(x, g.const(_np(norm.weight)), g.const(_np(norm.bias)), c)
        # mish(x) = x tanh(log(1 + e^x)): ONNX Runtime's Softplus kernel is ~5x slower than these three.
        # e^x overflows to inf for x > 88, and then tanh(inf) = 1, as it should be.
        softplus = g.op("Log", g.op("Add", g.op("Exp", x), self.one))
        return g.op("Mul", x, g.op("Tanh", softplus))

    def affine(self, x: str, scale: str, bias: str, c: int) -> str:
        """``scale * x + bias`` per channel of ``x`` ``(1, C, T)``, as one inference-mode batch norm."""
        g = self.g
        return g.op("BatchNormalization", x, scale, bias, g.const(np.zeros(c, np.float32)),
                    g.const(np.ones(c, np.float32)), epsilon=0.0)

    def res(self, block: FiLMResBlock, x: str, t: int, scale: str, bias: str) -> str:
        conv1, norm1, _ = block.block1
        conv2, norm2, _ = block.block2
        h = self.norm_mish(self.conv(x, t, conv1)[0], t, norm1)
        h = self.affine(h, scale, bias, conv1.out_channels)
        h = self.norm_mish(self.conv(h, t, conv2)[0], t, norm2)
        skip = x if isinstance(block.skip, nn.Identity) else self.conv_cm(x, t, block.skip)[0]
        return self.g.op("Add", h, skip)

    # --- the step, and the whole sampling loop --------------------------------------------
    def eps(self, x: str, film: str, horizon: int, action_dim: int, out: str | None = None) -> str:
        """Nodes of one step: the predicted noise ``(1, T, A)`` for ``x`` ``(1, T, A)`` and one ``film`` vector."""
        g, fast = self.g, self.unet
        unet = fast.unet
        sizes = fast.film_sizes()
        films = g.op("Split", film, g.const(np.array(sizes, np.int64)), outputs=len(sizes), axis=0)
        film_of = [(films[2 * i], films[2 * i + 1]) for i in range(len(fast.blocks))]
        x = g.op("Transpose", x, perm=[0, 2, 1])
        t, i, skips = horizon, 0, []
        for _, _, down in unet.down:
            x = self.res(fast.blocks[i + 1], self.res(fast.blocks[i], x, t, *film_of[i]), t, *film_of[i + 1])
            i += 2
            skips.append((x, t))
            if not isinstance(down, nn.Identity):
                x, t = self.conv_cm(x, t, down)
        for _ in unet.mid:
            x = self.res(fast.blocks[i], x, t, *film_of[i])
            i += 1
        for _, _, up in unet.up:
            skip, t_skip = skips.pop()
            if t_skip != t:
                raise ValueError(f"horizon {horizon} does not survive the UNet's down/up sampling")
            x = g.op("Concat", x, skip, axis=1)
            x = self.res(fast.blocks[i + 1], self.res(fast.blocks[i], x, t, *film_of[i]), t, *film_of[i + 1])
            i += 2
            x, t = self.conv_transpose(x, t, up)
        (conv, norm, _), head_out = unet.head
        x = self.norm_mish(self.conv(x, t, conv)[0], t, norm)
        y, _ = self.conv(x, t, head_out)
        return g.op("Reshape", y, g.shape(1, horizon, action_dim), name=out)

    def _model(self, name: str, inputs: list[tuple[str, list[int]]], output: tuple[str, list[int]]):
        from onnx import TensorProto

        h = self.g.helper
        graph = h.make_graph(self.g.nodes, name, [h.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                             [h.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])], self.g.inits)
        return self._make_model(graph)

    def film_size(self) -> int:
        return sum(self.unet.film_sizes())

    def _make_model(self, graph):
        """The model, stamped with the oldest IR version its opsets allow rather than the newest this onnx
        writes: an onnxruntime older than onnx refuses a newer IR (1.30 with onnx 1.23: IR 14 > 13)."""
        h = self.g.helper
        opsets = [h.make_opsetid("", OPSET)] + ([h.make_opsetid("com.microsoft", 1)] if self.int8 else [])
        model = h.make_model(graph, opset_imports=opsets, producer_name="dp_core")
        model.ir_version = h.find_min_ir_version_for(opsets, ignore_unknown=True)
        return model

    def write(self, horizon: int, action_dim: int):
        self.eps("x", "film", horizon, action_dim, out="eps")
        return self._model("unet_step", [("x", [1, horizon, action_dim]), ("film", [self.film_size()])],
                           ("eps", [1, horizon, action_dim]))

    def write_loop(self, horizon: int, action_dim: int, clip: float | None):
        """The noise-free sampler updates (``SamplingPlan.step`` without noise) around the step, as one ONNX
        ``Loop`` (its body holds the weights once): inputs ``x``, ``films`` ``(K, F)`` and ``coef`` ``(K, 5)`` =
        (sqrt_beta, sqrt_alpha, c_x0, c_x, c_eps); output ``out``. The step count K is read from ``films`` at
        run time, so that one session serves every plan (cold and warm start): each session holds its own
        copy of the weights (about 3x their size with ONNX Runtime's packed copies)."""
        from onnx import TensorProto

        g, h = self.g, self.g.helper
        eps = self.eps("x_in", g.op("Gather", "films", "k", axis=0), horizon, action_dim)
        sqrt_beta, sqrt_alpha, c_x0, c_x, c_eps = g.op("Split", g.op("Gather", "coef", "k", axis=0),
                                                       g.const(np.ones(5, np.int64)), outputs=5, axis=0)
        x0 = g.op("Div", g.op("Sub", "x_in", g.op("Mul", sqrt_beta, eps)), sqrt_alpha)
        if clip is not None:
            x0 = g.op("Clip", x0, g.const(np.array(-clip, np.float32)), g.const(np.array(clip, np.float32)))
        g.op("Add", g.op("Add", g.op("Mul", c_x0, x0), g.op("Mul", c_x, "x_in")), g.op("Mul", c_eps, eps), name="x_out")
        g.op("Identity", "cond_in", name="cond_out")
        shape = [1, horizon, action_dim]
        body = h.make_graph(
            g.nodes, "step",
            [h.make_tensor_value_info("k", TensorProto.INT64, []), h.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             h.make_tensor_value_info("x_in", TensorProto.FLOAT, shape)],
            [h.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             h.make_tensor_value_info("x_out", TensorProto.FLOAT, shape)],
            g.inits,
        )
        first = self.g.numpy_helper.from_array(np.array(0, np.int64), "loop_first_axis")
        count = [h.make_node("Shape", ["films"], ["loop_films_shape"]),
                 h.make_node("Gather", ["loop_films_shape", "loop_first_axis"], ["loop_steps"], axis=0)]
        loop = h.make_node("Loop", ["loop_steps", "", "x"], ["out"], body=body)
        graph = h.make_graph(
            [*count, loop], "unet_sampling",
            [h.make_tensor_value_info("x", TensorProto.FLOAT, shape),
             h.make_tensor_value_info("films", TensorProto.FLOAT, ["steps", self.film_size()]),
             h.make_tensor_value_info("coef", TensorProto.FLOAT, ["steps", 5])],
            [h.make_tensor_value_info("out", TensorProto.FLOAT, shape)], [first])
        return self._make_model(graph)


def unet_step_model(unet: FastUnet1D, horizon: int, action_dim: int, int8: bool = False):
    """The ONNX model of one denoising step for one sample: inputs ``x`` ``(1, T, A)`` and ``film``
    (the FiLM ``scale, bias`` of every block, concatenated); output ``eps``. ``int8``: int8 weights for
    the deep convolutions (module docstring)."""
    return _StepWriter(unet, int8).write(horizon, action_dim)


class OrtUnetStep:
    """``condition``, ``step`` and the whole noise-free sampling loop of a :class:`FastUnet1D` in ONNX Runtime
    (CPU tensors only). A batch of several samples runs the single-sample graphs once per sample."""

    def __init__(self, unet: FastUnet1D, threads: int | None = None, int8: bool = False) -> None:
        import onnxruntime  # the optional dependency is needed only when this backend is chosen

        self._ort = onnxruntime
        self.unet = unet
        self.threads = threads
        self.int8 = int8
        self._modules = list(unet.unet.modules())  # walked per chunk: sees replaced parameters too
        self._weights: tuple | None = None
        self._sessions: dict[tuple, object] = {}
        self._step_films: dict[tuple, torch.Tensor] = {}  # timesteps -> FastUnet1D.film_step_part, current weights

    def _weights_key(self) -> tuple:
        return weights_key(module_tensors(self._modules, buffers=False))

    def _build(self, what: tuple):
        """A session for ``("step", T, A)`` or ``("loop", T, A, clip)``."""
        start = time.perf_counter()
        writer = _StepWriter(self.unet, self.int8)
        model = writer.write(*what[1:3]) if what[0] == "step" else writer.write_loop(*what[1:])
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = self._ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        log.info("UNet %s built for ONNX Runtime in %.2f s (%s%s)", what[0], time.perf_counter() - start, what[1:],
                 ", int8 deep layers" if self.int8 else "")
        return session

    def _get(self, what: tuple):
        weights = self._weights_key()
        if weights != self._weights:  # a graph holds the weights it was built with
            self._sessions.clear()
            self._step_films.clear()
            self._weights = weights
        if what not in self._sessions:
            self._sessions[what] = self._build(what)
        return self._sessions[what]

    def _what(self, plan: SamplingPlan, sample: torch.Tensor) -> tuple:
        """The session ``plan`` runs on: the whole loop when it is noise-free, else the single step."""
        shape = tuple(sample.shape[1:])
        return ("step", *shape) if plan.draws_noise else ("loop", *shape, plan.clip)

    def condition(self, plan: SamplingPlan, global_cond: torch.Tensor, sample: torch.Tensor) -> np.ndarray:
        """The FiLM inputs ``(K, B, F)`` of the chunk's steps (the timesteps' part kept per plan and weights,
        the observation's computed per chunk); also builds the session that ``plan`` runs on for the current
        weights, if needed (so that a failure shows here)."""
        if sample.device.type != "cpu":
            raise ValueError(f"the ONNX Runtime backend runs on the CPU; the policy is on {sample.device}")
        self._get(self._what(plan, sample))
        key = tuple(plan.timesteps.tolist())
        if key not in self._step_films:
            self._step_films[key] = self.unet.film_step_part(plan.timesteps)
        table = self.unet.film_table(plan.timesteps, global_cond, self._step_films[key])
        return np.ascontiguousarray(table.float().numpy())

    def __call__(self, x: torch.Tensor, films: np.ndarray) -> torch.Tensor:
        """Predicted noise for ``x`` ``(B, T, A)`` at the step whose FiLM inputs ``(B, F)`` are ``films``."""
        session = self._get(("step", *x.shape[1:]))
        xs = x.detach().float().contiguous().numpy()
        out = [session.run(None, {"x": xs[b : b + 1], "film": films[b]})[0] for b in range(len(xs))]
        return torch.from_numpy(out[0] if len(out) == 1 else np.concatenate(out))

    def sample(self, plan: SamplingPlan, x: torch.Tensor, films: np.ndarray) -> torch.Tensor:
        """All steps of a noise-free ``plan`` (DDIM) from ``x`` in one session run per sample."""
        if plan.draws_noise:
            raise ValueError("the ONNX Runtime sampling loop runs noise-free plans only")
        session = self._get(self._what(plan, x))
        coef = torch.stack(plan.coefficient_table(), dim=1)
        coef = np.ascontiguousarray(coef.float().cpu().numpy())
        xs = x.detach().float().contiguous().numpy()
        out = [session.run(None, {"x": xs[b : b + 1], "films": np.ascontiguousarray(films[:, b]), "coef": coef})[0]
               for b in range(len(xs))]
        return torch.from_numpy(out[0] if len(out) == 1 else np.concatenate(out))
