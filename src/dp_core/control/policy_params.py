"""The policy node's parameters as a dataclass, read from a ROS 2 parameter file without ROS.

The node declares exactly these parameters with these defaults; bag replay reads the same file
(``<node>.ros__parameters`` of e.g. config/pusht_sim.yaml), so both run with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from ..config import ConfigError, PolicyConfig, ShapeMeta, from_dict, read_yaml
from ..fast_inference import InferenceOptions
from ..msg_fields import OBS_TYPES, columns_unreadable


# parameters an older parameter file may still set, and what replaced them
RENAMED = {"rate_hz": "replan_steps (a chunk every replan_steps * dt; 0: the policy's n_action_steps, Ta)"}


def check_renamed(names) -> None:
    """Raise ``ConfigError`` naming the replacement of any renamed parameter in ``names``."""
    old = [f"'{n}' was replaced by {RENAMED[n]}" for n in names if n in RENAMED]
    if old:
        raise ConfigError("policy parameters: " + "; ".join(old))


@dataclass
class PolicyNodeParams:
    checkpoint: str = ""
    device: str = "auto"
    replan_steps: int = 0  # a new chunk every replan_steps * dt; 0: the policy's n_action_steps (Ta, as in the paper)
    dt: float = 0.1
    max_obs_age_s: float = 0.25
    obs_keys: list[str] = field(default_factory=lambda: ["keypoint", "agent_pos"])
    obs_topics: list[str] = field(default_factory=lambda: ["/pusht/keypoints", "/robot/tcp_pose"])
    obs_types: list[str] = field(default_factory=lambda: ["PoseArray", "PoseStamped"])
    action_names: list[str] = field(default_factory=lambda: ["x", "y"])
    warm_start: bool = False  # True: each chunk from the previous one, re-noised (fewer steps, lower score)
    extra_latency_s: float = 0.0
    chunk_topic: str = "/policy/action_chunk"
    cpu_threads: int = 1
    fast_inference: bool = True  # False: the reference sampling path
    inference_precision: str = "fp32"  # bf16 (CUDA): bf16 weights for the denoising steps; int8: int8 weights
    # for the deep convolutions (CPU: ONNX Runtime backend; CUDA: torch backend, Triton products)
    cuda_graph: bool = True  # capture noise-free sampling on CUDA
    inference_compile: bool = False  # torch.compile the encoder and UNet step (torch backend; compiled in the warm-up)
    inference_backend: str = "auto"  # torch | onnxruntime (the UNet step in ONNX Runtime, CPU) | auto: ORT on a CPU
    check_cameras: bool = True  # refuse frames from a camera unlike the recorded one (size, serial; dp_core.camera_sources)

    def inference_options(self) -> InferenceOptions:
        return InferenceOptions(fast=self.fast_inference, precision=self.inference_precision, cuda_graph=self.cuda_graph,
                                compile=self.inference_compile, backend=self.inference_backend)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise ``ConfigError`` on inconsistent observation lists or unknown message types."""
        keys, topics, types = self.obs_keys, self.obs_topics, self.obs_types
        if not len(keys) == len(topics) == len(types):
            raise ConfigError(f"obs_keys, obs_topics and obs_types must have equal lengths: {keys} {topics} {types}")
        bad = [t for t in types if t not in OBS_TYPES]
        if bad:
            raise ConfigError(f"obs_types entries {bad} are not among {list(OBS_TYPES)}")
        if self.inference_precision not in ("fp32", "bf16", "int8"):
            raise ConfigError(f"inference_precision must be 'fp32', 'bf16' or 'int8'; got {self.inference_precision!r}")
        if self.inference_backend not in ("torch", "onnxruntime", "auto"):
            raise ConfigError(f"inference_backend must be 'torch', 'onnxruntime' or 'auto'; got {self.inference_backend!r}")
        if self.inference_compile and self.inference_backend == "onnxruntime":
            raise ConfigError("inference_compile applies to the torch backend, not to inference_backend 'onnxruntime'")
        if self.dt <= 0 or self.max_obs_age_s <= 0:
            raise ConfigError(f"dt and max_obs_age_s must be > 0; got {self.dt}, {self.max_obs_age_s}")
        if self.replan_steps < 0:
            raise ConfigError(f"replan_steps must be >= 0 (0: the policy's n_action_steps); got {self.replan_steps}")

    def replan_period(self, cfg: PolicyConfig) -> float:
        """Seconds between chunks for a policy with ``cfg``; ``ConfigError`` if a chunk would run out first."""
        steps = self.replan_steps or cfg.n_action_steps
        available = cfg.horizon - cfg.n_obs_steps + 1  # actions from the newest observation's step on
        if steps > available:
            raise ConfigError(f"replan_steps {steps} exceeds the {available} actions a chunk of this policy holds "
                              f"(horizon {cfg.horizon}, n_obs_steps {cfg.n_obs_steps}): execution would run dry")
        return steps * self.dt


def load_node_params(path: str | Path, node: str = "policy") -> PolicyNodeParams:
    """``PolicyNodeParams`` from the ``<node>: ros__parameters:`` section of a parameter file."""
    path = Path(path)
    data = read_yaml(path, "parameter file")
    section = data.get(node, {}) if isinstance(data, dict) else None
    if not isinstance(section, dict) or "ros__parameters" not in section:
        raise ConfigError(f"{path}: no '{node}: ros__parameters:' section")
    try:
        check_renamed(section["ros__parameters"] or {})
        params = from_dict(PolicyNodeParams, section["ros__parameters"], f"{node}.ros__parameters")
        params.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return params


def used_observations(params: PolicyNodeParams, shape_meta: ShapeMeta) -> dict[str, tuple[str, str]]:
    """``{obs key: (topic, message type)}`` of the configured observations the policy uses.

    Raises ``ConfigError`` when the policy needs an observation the parameters do not provide, the
    action names do not match the policy's action dimension, or a PoseArray observation takes columns.
    """
    missing = set(shape_meta.obs) - set(params.obs_keys)
    if missing:
        raise ConfigError(f"policy needs observations {sorted(missing)} that obs_keys {params.obs_keys} do not provide")
    if len(params.action_names) != shape_meta.action.dim:
        raise ConfigError(f"action_names {params.action_names} vs policy action dim {shape_meta.action.dim}")
    used = {key: (topic, type_name) for key, topic, type_name in zip(params.obs_keys, params.obs_topics, params.obs_types)
            if key in shape_meta.obs}
    for key, (_, type_name) in used.items():
        why = columns_unreadable(shape_meta.obs[key], type_name)
        if why:
            raise ConfigError(f"observation '{key}': {why}")
    return used
