"""Configuration dataclasses, loaded from YAML with errors that name the bad key.

One :class:`ExperimentConfig` describes a training run: the policy (shapes, horizons,
denoiser, encoder, diffusion schedule), the data and the optimisation. The policy part
is stored inside every checkpoint so that a model file is self-describing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the dotted key."""


@dataclass
class ObsSpec:
    """One observation stream.

    ``low_dim``: a flat vector of ``shape[0]`` values taken from ``data/<source>``
    (flattened per step), optionally only the columns ``columns[0]:columns[1]``.
    ``rgb``: an image of ``shape = [H, W, 3]`` (uint8 or 0-255 floats, HWC).
    """

    type: Literal["low_dim", "rgb"]
    shape: list[int]
    source: str = ""
    columns: list[int] | None = None

    def __post_init__(self) -> None:
        if self.type == "rgb" and (len(self.shape) != 3 or self.shape[2] != 3):
            raise ConfigError(f"rgb observation shape must be [H, W, 3], got {self.shape}")
        if self.type == "low_dim" and len(self.shape) != 1:
            raise ConfigError(f"low_dim observation shape must be [D], got {self.shape}")
        if self.columns is not None and (len(self.columns) != 2 or self.columns[1] - self.columns[0] != self.shape[0]):
            raise ConfigError(f"columns {self.columns} must be [start, stop] with stop - start == shape[0]")


@dataclass
class ActionSpec:
    dim: int = 2
    source: str = "action"


@dataclass
class ShapeMeta:
    """Names, kinds and shapes of observations and actions: the model's contract."""

    obs: dict[str, ObsSpec] = field(default_factory=dict)
    action: ActionSpec = field(default_factory=ActionSpec)

    def __post_init__(self) -> None:
        for name, spec in self.obs.items():
            if not spec.source:
                spec.source = name

    @property
    def rgb_keys(self) -> list[str]:
        return [k for k, s in self.obs.items() if s.type == "rgb"]

    @property
    def low_dim_keys(self) -> list[str]:
        return [k for k, s in self.obs.items() if s.type == "low_dim"]


@dataclass
class UnetConfig:
    """Conditional 1-D UNet with FiLM (paper: 256,512,1024 low-dim; 512,1024,2048 image)."""

    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128

    def __post_init__(self) -> None:
        if not self.down_dims or self.n_groups < 1 or any(d < 1 or d % self.n_groups for d in self.down_dims):
            raise ConfigError(f"down_dims {self.down_dims} must be non-empty and each divisible by n_groups "
                              f"({self.n_groups}, group norm)")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd (it keeps the horizon's length); got {self.kernel_size}")
        if self.step_embed_dim < 2 or self.step_embed_dim % 2:
            raise ConfigError(f"step_embed_dim must be even and >= 2 (sine and cosine halves); got {self.step_embed_dim}")


@dataclass
class TransformerConfig:
    """Time-series diffusion transformer (paper Push-T: 8 layers, 4 heads, 256 embedding)."""

    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3
    causal_attn: bool = True

    def __post_init__(self) -> None:
        if self.n_layer < 1 or self.n_head < 1 or self.n_emb < 2 or self.n_emb % 2 or self.n_emb % self.n_head:
            raise ConfigError(f"need n_layer >= 1 and an even n_emb divisible by n_head; got n_layer {self.n_layer}, "
                              f"n_emb {self.n_emb}, n_head {self.n_head}")
        if not (0.0 <= self.p_drop_emb < 1.0 and 0.0 <= self.p_drop_attn < 1.0):
            raise ConfigError(f"dropout probabilities must be in [0, 1); got p_drop_emb {self.p_drop_emb}, "
                              f"p_drop_attn {self.p_drop_attn}")


@dataclass
class VisionConfig:
    """Per-camera ResNet-18 (GroupNorm, spatial softmax) with random/center crop."""

    crop_shape: list[int] | None = field(default_factory=lambda: [84, 84])
    num_keypoints: int = 32
    feature_dim: int = 64
    group_norm_channels: int = 16

    def __post_init__(self) -> None:
        if self.crop_shape is not None and (len(self.crop_shape) != 2 or min(self.crop_shape) < 1):
            raise ConfigError(f"crop_shape must be [H, W] with H, W >= 1, or null; got {self.crop_shape}")
        if self.num_keypoints < 1 or self.feature_dim < 1:
            raise ConfigError(f"num_keypoints and feature_dim must be >= 1; got {self.num_keypoints}, {self.feature_dim}")
        if not 1 <= self.group_norm_channels <= 64 or 64 % self.group_norm_channels:
            raise ConfigError(f"group_norm_channels must divide 64 (ResNet-18's narrowest layer); got "
                              f"{self.group_norm_channels}")


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # those DDPM and DDIM both implement


@dataclass
class DiffusionConfig:
    """Noise schedule (DDPM for training) and the sampler used at inference."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon"] = "epsilon"
    clip_sample: bool = True
    inference_scheduler: Literal["ddpm", "ddim"] = "ddim"
    num_inference_steps: int = 16
    # Warm start (measured on Push-T, state UNet, 20 episodes: 8 steps at 0.6 scored 0.91, cold DDIM 8
    # 0.88, cold DDIM 16 0.93; 4 steps at 0.3 only 0.80: too little noise to revise the padded tail).
    warm_start_steps: int = 8
    warm_start_strength: float = 0.6

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule {self.beta_schedule!r} is not one of {list(BETA_SCHEDULES)}")
        if self.num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be >= 1; got {self.num_train_timesteps}")
        if not 0.0 < self.warm_start_strength <= 1.0:
            raise ConfigError(f"warm_start_strength must be in (0, 1], got {self.warm_start_strength}")
        if self.num_inference_steps < 1 or self.warm_start_steps < 1:
            raise ConfigError("num_inference_steps and warm_start_steps must be >= 1")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ConfigError(f"num_inference_steps ({self.num_inference_steps}) must be <= num_train_timesteps "
                              f"({self.num_train_timesteps})")
        warm_grid = max(self.warm_start_steps, round(self.warm_start_steps / self.warm_start_strength))
        if warm_grid > self.num_train_timesteps:
            raise ConfigError(f"warm_start_steps / warm_start_strength ({warm_grid} steps of the schedule) must be "
                              f"<= num_train_timesteps ({self.num_train_timesteps})")


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy: stored in each checkpoint."""

    shape_meta: ShapeMeta = field(default_factory=ShapeMeta)
    kind: Literal["diffusion", "regression"] = "diffusion"
    denoiser: Literal["unet", "transformer"] = "unet"
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    unet: UnetConfig = field(default_factory=UnetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if min(self.horizon, self.n_obs_steps, self.n_action_steps) < 1:
            raise ConfigError(f"horizon, n_obs_steps and n_action_steps must be >= 1; got {self.horizon}, "
                              f"{self.n_obs_steps}, {self.n_action_steps}")
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ConfigError(
                f"n_action_steps ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                f"({self.horizon - self.n_obs_steps + 1})"
            )
        if self.denoiser == "unet" and self.horizon % (2 ** (len(self.unet.down_dims) - 1)):
            raise ConfigError(
                f"horizon {self.horizon} must be divisible by 2**(len(unet.down_dims)-1) for the UNet"
            )
        crop = self.vision.crop_shape
        for key in self.shape_meta.rgb_keys:
            h, w = self.shape_meta.obs[key].shape[:2]
            if crop is not None and (crop[0] > h or crop[1] > w):
                raise ConfigError(f"vision.crop_shape {crop} is larger than observation '{key}' ({h} x {w})")


@dataclass
class DataConfig:
    path: str = "../shared/data/pusht/pusht_cchi_v7_replay.zarr"
    val_ratio: float = 0.02
    max_train_episodes: int | None = None
    split_seed: int = 42

    def __post_init__(self) -> None:
        self.path = os.path.expanduser(self.path)  # a shell leaves ~ in data.path=~/... as it is
        if not 0.0 <= self.val_ratio < 1.0:
            raise ConfigError(f"val_ratio must be in [0, 1); got {self.val_ratio}")
        if self.max_train_episodes is not None and self.max_train_episodes < 1:
            raise ConfigError(f"max_train_episodes must be >= 1 or null (all); got {self.max_train_episodes}")


LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 42
    device: str = "auto"
    batch_size: int = 256
    num_steps: int = 100_000
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    allow_tf32: bool = True  # CUDA: TF32 matrix products and cuDNN autotuning for fp32 work
    cuda_graph: bool = True  # CUDA, one process, UNet policies (ignored elsewhere): each step a replayed CUDA graph
    log_every: int = 50
    val_every: int = 1000
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        self.output_dir = os.path.expanduser(self.output_dir)
        for name in ("batch_size", "num_steps", "log_every", "val_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1; got {getattr(self, name)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"train.lr_scheduler: {self.lr_scheduler!r} is not one of {list(LR_SCHEDULERS)}")
        for name in ("lr", "grad_clip"):  # grad_clip 0 would zero every gradient
            if not 0.0 < getattr(self, name) < math.inf:
                raise ConfigError(f"train.{name} must be > 0 and finite; got {getattr(self, name)}")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads a bare no as false
            value = "no"
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float and not isinstance(value, bool):
        # PyYAML reads "3e-4" (no dot) as a string: accept any number spelled out.
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}; valid keys here: {', '.join(names)}")
        kwargs[key] = _convert(hints[key], value, dotted)
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ConfigError(f"{prefix or '<root>'}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix or '<root>'}: {exc}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or a section left empty in the YAML file
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML document at ``path`` ({} when empty); ``ConfigError`` naming the file otherwise."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML, applying ``key=value`` overrides."""
    path = Path(path)
    data = read_yaml(path)
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
