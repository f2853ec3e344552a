"""Training loop and the ``dp-train`` command.

Single process: ``dp-train --config config/pusht_state_unet_small.yaml train.num_steps=5000``.
Multi-GPU (or multi-process CPU with gloo): ``torchrun --nproc_per_node 2 -m dp_core.train --config ...``.

All randomness of step ``k`` (batch order, noise, timesteps, crops, dropout) is derived
from ``(seed, k)``, so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .camera_sources import ATTRIBUTE as CAMERAS_ATTRIBUTE
from .camera_sources import policy_cameras, read_cameras, write_cameras
from .checkpoint import CheckpointError, load_training_state, resolve_device, save_policy, save_training_state
from .config import ConfigError, ExperimentConfig, load_config, to_dict
from .control_period import ATTRIBUTE as PERIOD_ATTRIBUTE
from .control_period import read_period
from .dataset import DatasetError, EpisodeStore, WindowDataset, build_datasets, split_episodes
from .fast_inference import InferenceOptions
from .policy import DiffusionPolicy
from .train_graph import GraphCaptureError, GraphedTrainStep, make_capturable


def _batch_items(n: int, batch_size: int, step: int, seed: int, rank: int, world: int) -> np.ndarray:
    """Dataset items of ``step``: a seeded permutation per epoch, sharded over ranks."""
    per_rank = max(1, n // world)
    bs = min(batch_size, per_rank)
    per_epoch = per_rank // bs
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)[rank::world][:per_rank]
    return perm[k * bs : (k + 1) * bs]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        "obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
        "action": batch["action"].to(device, non_blocking=True),
    }


class Trainer:
    """Owns the policy, optimiser, schedule, EMA and checkpoints of one run."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed:
            device = resolve_device(cfg.train.device)
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                device = torch.device("cuda", local)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            device = resolve_device(cfg.train.device)
            self.rank, self.world = 0, 1
        self.device = device
        self.out = Path(cfg.train.output_dir)
        torch.manual_seed(cfg.train.seed)

        self.train_set, self.val_set, arrays = build_datasets(cfg.data, cfg.policy)
        if len(self.train_set) == 0:
            raise DatasetError(f"{cfg.data.path}: no training windows")
        store = EpisodeStore.open(cfg.data.path)
        # What the split was drawn from, and the split: a resumed run must see the same (Trainer.load).
        self.data_split = {"n_episodes": store.n_episodes, "n_steps": store.n_steps,
                           "val_episodes": split_episodes(store.n_episodes, cfg.data)[1].tolist()}
        # the recorded cameras of the policy's image inputs, for the policy node to check the live ones against
        recorded = read_cameras(store.group.attrs.get(CAMERAS_ATTRIBUTE))
        self.cameras = write_cameras(policy_cameras(recorded, cfg.policy.shape_meta))
        self.control_dt = read_period(store.group.attrs)  # the period the data was recorded at, when known
        self.policy = DiffusionPolicy(cfg.policy)
        rows = np.unique(self.train_set.indices)  # the normaliser sees the training data only, not validation
        self.policy.normalizer.fit(
            {k: arrays.obs[k][rows] for k in cfg.policy.shape_meta.low_dim_keys}, arrays.action[rows]
        )
        self.policy.to(device)
        if device.type == "cuda" and cfg.train.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        # Validation sampling: fast path, but no weight-layout changes or graphs under the optimiser and DDP.
        self.policy.configure_inference(InferenceOptions(cuda_graph=False, channels_last=False))
        self.model = DistributedDataParallel(self.policy) if self.distributed else self.policy
        t = cfg.train
        # CUDA graphs for one process training a UNet (the transformer's attention checks masks on the host).
        graph = t.cuda_graph and device.type == "cuda" and not self.distributed and cfg.policy.denoiser == "unet"
        # One fused kernel per parameter group (CPU and CUDA) instead of a loop over ~150 tensors.
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=t.lr, betas=tuple(t.betas),
                                           weight_decay=t.weight_decay, fused=True)
        if graph:
            make_capturable(self.optimizer, device)
        self.lr_scheduler = get_scheduler(t.lr_scheduler, self.optimizer, num_warmup_steps=t.lr_warmup_steps, num_training_steps=t.num_steps)
        self.ema = EMAModel(self.policy.parameters(), decay=t.ema_max_decay, use_ema_warmup=True, power=t.ema_power, inv_gamma=1.0, min_decay=0.0, foreach=True)
        self.step = 0
        bf16 = t.mixed_precision == "bf16" or (t.mixed_precision == "auto" and device.type == "cuda")
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.graph_step = GraphedTrainStep(self.policy, self.optimizer, t.grad_clip, torch.bfloat16 if bf16 else None) if graph else None

    # --- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "config": to_dict(self.cfg),
            "model": self.policy.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "data_split": self.data_split,
        }

    def load(self, path: str | Path) -> None:
        """Continue from training checkpoint ``path``; its config must match this one (:func:`resume_changes`)."""
        state = load_training_state(path)
        changes = resume_changes(state.get("config", {}), to_dict(self.cfg))
        if changes:
            raise ConfigError(f"{path}: a resumed run continues exactly only with the checkpoint's config; give "
                              f"these the checkpoint's values: {'; '.join(changes)}")
        saved = state.get("data_split")
        if saved is not None and saved != self.data_split:
            raise ConfigError(
                f"{path}: the dataset changed since this checkpoint ({saved['n_episodes']} episodes, "
                f"{saved['n_steps']} steps; now {self.data_split['n_episodes']}, {self.data_split['n_steps']}): resuming "
                "would draw another train/validation split, so validation would score episodes already trained on. "
                "Resume with the checkpoint's dataset, or start a new run (another train.output_dir)")
        self.policy.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)  # the training state is read onto the CPU
        self.optimizer.load_state_dict(state["optimizer"])
        if self.graph_step is not None:
            make_capturable(self.optimizer, self.device)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step = int(state["step"])

    def save_ema_policy(self, path: Path) -> Path:
        params = list(self.policy.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            extra = {"step": self.step, "name": self.cfg.name, **({CAMERAS_ATTRIBUTE: self.cameras} if self.cameras else {}),
                     **({PERIOD_ATTRIBUTE: self.control_dt} if self.control_dt is not None else {})}
            return save_policy(self.policy, path, extra=extra)
        finally:
            self.ema.restore(params)

    def checkpoint(self) -> None:
        if self.rank != 0:
            return
        ckpt_dir = self.out / "checkpoints"
        save_training_state(ckpt_dir / f"train_{self.step:08d}.pt", self.state())
        self.save_ema_policy(ckpt_dir / f"policy_{self.step:08d}.safetensors")
        self.save_ema_policy(self.out / "policy.safetensors")
        for kind, pattern in (("train", "train_*.pt"), ("policy", "policy_*.safetensors")):
            old = sorted(ckpt_dir.glob(pattern))[: -self.cfg.train.keep_checkpoints]
            for p in old:
                p.unlink()

    # --- loop ----------------------------------------------------------------------------
    def _generator(self, seed: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g

    def train_step(self) -> float:
        t = self.cfg.train
        items = _batch_items(len(self.train_set), t.batch_size, self.step, t.seed, self.rank, self.world)
        seed = t.seed * 1_000_003 + self.step * 101 + self.rank
        self.model.train()
        loss = None
        if self.graph_step is not None:
            try:
                loss = self.graph_step(self.train_set.batch(items), seed, seed)
            except GraphCaptureError as exc:  # parameters and optimiser state are as before the attempt
                warnings.warn(f"{exc}; training without graphs", RuntimeWarning, stacklevel=2)
                self.graph_step = None
        if loss is None:
            batch = _to_device(self.train_set.batch(items), self.device)
            torch.manual_seed(seed)  # dropout
            with self.autocast:
                loss = self.model(batch, self._generator(seed))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), t.grad_clip, foreach=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        self.ema.step(self.policy.parameters())
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def validate(self, dataset: WindowDataset, max_batches: int = 8) -> dict[str, float]:
        """EMA weights: denoising loss and sampled-action MSE on one batch."""
        params = list(self.policy.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        self.policy.eval()
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            bs = self.cfg.train.batch_size
            losses = []
            for b in range(min(max_batches, math.ceil(len(dataset) / bs))):
                items = np.arange(b * bs, min((b + 1) * bs, len(dataset)))
                batch = _to_device(dataset.batch(items), self.device)
                losses.append(self.policy.compute_loss(batch, g).item())
            items = np.linspace(0, len(dataset) - 1, min(bs, len(dataset))).astype(int)
            batch = _to_device(dataset.batch(items), self.device)
            pred = self.policy.predict_action(batch["obs"], generator=g)["action_pred"]
            mse = torch.mean((pred - batch["action"]) ** 2).item()
        finally:
            self.ema.restore(params)
        return {"loss": float(np.mean(losses)), "action_mse": mse}

    def run(self) -> Path:
        t = self.cfg.train
        writer = SummaryWriter(str(self.out / "tb")) if self.rank == 0 else None
        bar = tqdm(total=t.num_steps, initial=self.step, desc=self.cfg.name, disable=self.rank != 0, dynamic_ncols=True)
        try:
            while self.step < t.num_steps:
                loss = self.train_step()
                if self.distributed:  # every rank sees a non-finite loss at the same step, and stops there together
                    flag = torch.tensor([0.0 if math.isfinite(loss) else 1.0], device=self.device)
                    dist.all_reduce(flag)
                    loss = loss if flag.item() == 0 else math.nan
                if not math.isfinite(loss):  # the weights are NaN from here: write nothing more
                    raise TrainingError(f"the training loss is {loss} at step {self.step}; stopped without writing a "
                                        f"checkpoint (the last one, if any, is in {self.out / 'checkpoints'}). Lower "
                                        "train.lr, or check the data")
                bar.update(1)
                if writer and (self.step % t.log_every == 0 or self.step == 1):
                    writer.add_scalar("train/loss", loss, self.step)
                    writer.add_scalar("train/lr", self.lr_scheduler.get_last_lr()[0], self.step)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if writer and self.val_set is not None and self.step % t.val_every == 0:
                    for k, v in self.validate(self.val_set).items():
                        writer.add_scalar(f"val/{k}", v, self.step)
                if self.step % t.checkpoint_every == 0 and self.step < t.num_steps:
                    self.checkpoint()
            self.checkpoint()
            if self.distributed:
                self._check_replicas_equal()
        finally:
            bar.close()
            if writer:
                writer.close()
        return self.out / "policy.safetensors"

    def _check_replicas_equal(self) -> None:
        vec = torch.nn.utils.parameters_to_vector(self.policy.parameters()).detach()
        ref = vec.clone()
        dist.broadcast(ref, src=0)
        if not torch.equal(vec, ref):
            raise RuntimeError(f"rank {self.rank}: parameters diverged from rank 0")

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss)."""


# Keys a resumed run may change: where and how often it writes, where it runs and finds the data.
RESUMABLE = {"name", "data.path", "train.output_dir", "train.device", "train.cuda_graph", "train.log_every",
             "train.val_every", "train.checkpoint_every", "train.keep_checkpoints"}


def resume_changes(saved: dict, current: dict) -> list[str]:
    """``"key: checkpoint -> now"`` for each setting that differs from the checkpoint's and changes the run
    (the schedule, the model, the data split, ...). Keys only one of the two versions has are ignored."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(saved), flat(current)
    return [f"{k}: {old[k]!r} -> {v!r}" for k, v in new.items() if k in old and k not in RESUMABLE and old[k] != v]


def latest_training_state(output_dir: str | Path) -> Path | None:
    found = sorted(Path(output_dir, "checkpoints").glob("train_*.pt"))
    return found[-1] if found else None


def train(cfg: ExperimentConfig, resume: str | Path | None = None) -> Path:
    """Train ``cfg``; ``resume`` is a training checkpoint or ``"auto"`` (latest in output_dir)."""
    if resume == "auto":
        resume = latest_training_state(cfg.train.output_dir)
        if resume is None:
            print(f"dp-train: no training checkpoint in {Path(cfg.train.output_dir, 'checkpoints')}: starting at step 0",
                  file=sys.stderr)
    trainer = Trainer(cfg)
    try:
        if resume:
            trainer.load(resume)
        return trainer.run()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-train", description="Train a Diffusion Policy from a YAML config.")
    parser.add_argument("--config", required=True, help="YAML experiment config (see config/)")
    parser.add_argument("--resume", default=None, help="training checkpoint to resume from, or 'auto'")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.num_steps=1000")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        path = train(cfg, args.resume)
    except (ConfigError, DatasetError, CheckpointError, TrainingError) as exc:
        print(f"dp-train: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"policy written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
