"""Policy files (safetensors: weights + JSON config) and training checkpoints.

A policy file holds the EMA weights, the normaliser statistics (as buffers) and the
policy config in the safetensors metadata: nothing is unpickled when loading it.
A training checkpoint (``torch.save``, loaded with ``weights_only=True``) adds the
optimiser, LR scheduler, EMA state and step for exact resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ConfigError, PolicyConfig, from_dict, to_dict
from .policy import DiffusionPolicy

FORMAT = "dp_bringup.policy.v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the code; names the file."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def save_policy(policy: DiffusionPolicy, path: str | Path, extra: dict | None = None, half: bool = False) -> Path:
    """Write ``policy`` (its current weights) as one safetensors file; ``half`` stores the weights as fp16."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {name for name, _ in policy.named_parameters()}  # buffers (normaliser stats) stay fp32
    tensors = {}
    for k, v in policy.state_dict().items():
        v = v.detach().cpu()
        tensors[k] = (v.half() if half and k in params and v.is_floating_point() else v).contiguous()
    meta = {"format": FORMAT, "config": json.dumps(to_dict(policy.cfg)), "extra": json.dumps(extra or {})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_policy_file(path: str | Path) -> tuple[PolicyConfig, dict[str, torch.Tensor], dict]:
    """Config, state dict and extra metadata of a policy file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"policy file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors policy file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        cfg = from_dict(PolicyConfig, json.loads(meta["config"]))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: incompatible policy config ({exc})") from exc
    return cfg, tensors, extra


def policy_file_extra(path: str | Path) -> dict:
    """The extra metadata of a policy file (training step, name, recorded cameras ...) without its weights."""
    if not Path(path).is_file():
        raise CheckpointError(f"policy file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("extra", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors policy file ({exc})") from exc


def _build(path: str | Path, cfg: PolicyConfig, tensors: dict[str, torch.Tensor]) -> DiffusionPolicy:
    """The policy of ``cfg`` with the file's weights (fp16 ones widened); CheckpointError when they do not fit."""
    policy = DiffusionPolicy(cfg)
    own = policy.state_dict()
    tensors = {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    try:
        policy.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config ({exc})") from exc
    return policy


def load_policy(path: str | Path, device: str | torch.device = "auto") -> DiffusionPolicy:
    """Load a policy file for inference (eval mode) on ``device`` ("auto": CUDA if available)."""
    cfg, tensors, _ = read_policy_file(path)
    return _build(path, cfg, tensors).to(resolve_device(device)).eval()


def save_training_state(path: str | Path, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable training checkpoint ({exc})") from exc


def export_policy(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """Re-save a policy file, by default with fp16 weights (half the size; loads back as fp32)."""
    cfg, tensors, extra = read_policy_file(src)
    policy = _build(src, cfg, tensors)
    return save_policy(policy, dst, extra={**extra, "exported_from": Path(src).name, "fp16": half}, half=half)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="dp-export", description="Copy a policy file, optionally as fp16.")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    args = parser.parse_args(argv)
    try:
        path = export_policy(args.src, args.dst, half=not args.fp32)
    except CheckpointError as exc:
        print(f"dp-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
