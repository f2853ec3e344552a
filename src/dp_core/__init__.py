"""dp_core: a ROS-free Diffusion Policy library (models, data, training, inference, Push-T)."""

from .checkpoint import CheckpointError, load_policy, save_policy
from .config import ConfigError, ExperimentConfig, PolicyConfig, load_config
from .policy import DiffusionPolicy

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DiffusionPolicy",
    "ExperimentConfig",
    "PolicyConfig",
    "load_config",
    "load_policy",
    "save_policy",
]
