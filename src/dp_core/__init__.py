"""dp_core: a ROS-free Diffusion Policy library (models, data, training, inference, Push-T).

The public names are imported lazily, so that light users (e.g. ``dp_core.control`` in the
executor node) do not pay for importing torch and diffusers.
"""

from importlib import import_module

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_policy": "checkpoint",
    "save_policy": "checkpoint",
    "ConfigError": "config",
    "ExperimentConfig": "config",
    "PolicyConfig": "config",
    "load_config": "config",
    "DiffusionPolicy": "policy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dp_core' has no attribute {name!r}")
