import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import REPO, experiment, tiny_policy_config, write_episodes
from dp_core.checkpoint import load_policy, load_training_state, policy_file_extra
from dp_core.config import ConfigError, ObsSpec
from dp_core.control_period import check_policy_period
from dp_core.dataset import build_datasets, split_episodes
from dp_core.train import Trainer, TrainingError, main, train


def _cfg(data: Path, out: Path, **kw):
    return experiment(data, tiny_policy_config({"pos": ObsSpec("low_dim", [2])}, 1), out, **kw)


def test_training_writes_policy_checkpoints_and_tensorboard(ramp_dataset: Path, tmp_path: Path) -> None:
    path = train(_cfg(ramp_dataset, tmp_path / "run"))
    assert path.is_file()
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("train_*.pt"))
    assert [p.name for p in ckpts] == ["train_00000010.pt", "train_00000020.pt"]
    assert any((tmp_path / "run" / "tb").iterdir())


def test_loss_decreases(ramp_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(ramp_dataset, tmp_path / "run", num_steps=150))
    losses = [trainer.train_step() for _ in range(150)]
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:5]) / 5


def test_resume_continues_exactly(ramp_dataset: Path, tmp_path: Path) -> None:
    full = Trainer(_cfg(ramp_dataset, tmp_path / "full", num_steps=12, checkpoint_every=6))
    full.run()
    half = Trainer(_cfg(ramp_dataset, tmp_path / "half", num_steps=12, checkpoint_every=6))
    for _ in range(6):
        half.train_step()
    half.checkpoint()
    resumed = Trainer(_cfg(ramp_dataset, tmp_path / "half", num_steps=12, checkpoint_every=6))
    resumed.load(tmp_path / "half" / "checkpoints" / "train_00000006.pt")
    assert resumed.step == 6
    resumed.run()
    a, b = full.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a = load_training_state(tmp_path / "full" / "checkpoints" / "train_00000012.pt")["ema"]["shadow_params"]
    ema_b = load_training_state(tmp_path / "half" / "checkpoints" / "train_00000012.pt")["ema"]["shadow_params"]
    assert all(torch.equal(x, y) for x, y in zip(ema_a, ema_b))


def test_resume_refuses_a_config_that_would_not_continue_the_run(ramp_dataset: Path, tmp_path: Path) -> None:
    """The schedule and the optimiser come from the checkpoint's config: resuming under another num_steps or lr
    would jump the learning rate; where it writes and how often may change."""
    half = Trainer(_cfg(ramp_dataset, tmp_path / "run", num_steps=12, checkpoint_every=6))
    for _ in range(6):
        half.train_step()
    half.checkpoint()
    ckpt = tmp_path / "run" / "checkpoints" / "train_00000006.pt"
    other = Trainer(_cfg(ramp_dataset, tmp_path / "run", num_steps=20, lr=1e-5, checkpoint_every=6))
    with pytest.raises(ConfigError, match=r"train.num_steps: 12 -> 20; train.lr: 0.001 -> 1e-05"):
        other.load(ckpt)
    fine = Trainer(_cfg(ramp_dataset, tmp_path / "elsewhere", num_steps=12, checkpoint_every=3, val_every=5))
    fine.load(ckpt)
    assert fine.step == 6
    cfg = tmp_path / "c.yaml"
    cfg.write_text("policy:\n  shape_meta:\n    obs:\n      pos: {type: low_dim, shape: [2]}\n    action: {dim: 1}\n"
                   "  unet: {down_dims: [16, 32], step_embed_dim: 16}\n"
                   f"data: {{path: {ramp_dataset}}}\ntrain: {{output_dir: {tmp_path / 'cli'}, device: cpu}}\n")
    assert main(["--config", str(cfg), "--resume", str(tmp_path / "nope.pt")]) == 2  # a message, not a traceback


def test_cli_reports_bad_key_and_missing_data(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  path: {tmp_path / 'none.zarr'}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "dp_core.train", "--config", str(cfg), "train.bach_size=3"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "train.bach_size" in run.stderr and "batch_size" in run.stderr
    run = subprocess.run([sys.executable, "-m", "dp_core.train", "--config", str(cfg)], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "dataset not found" in run.stderr


@pytest.mark.slow
def test_distributed_data_parallel_two_cpu_processes(ramp_dataset: Path, tmp_path: Path) -> None:
    """torchrun + DDP with the gloo backend: replicas stay equal (checked inside) and a policy is written."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(
        "policy:\n  shape_meta:\n    obs:\n      pos: {type: low_dim, shape: [2]}\n    action: {dim: 1}\n"
        "  unet: {down_dims: [16, 32], step_embed_dim: 16}\n"
        f"data: {{path: {ramp_dataset}, val_ratio: 0.1}}\n"
        f"train: {{output_dir: {tmp_path / 'out'}, batch_size: 16, num_steps: 6, checkpoint_every: 3, val_every: 3, device: cpu}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "dp_core.train", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "policy.safetensors").is_file()
    assert load_training_state(tmp_path / "out" / "checkpoints" / "train_00000006.pt")["step"] == 6


def test_resume_refuses_a_dataset_with_other_episodes(ramp_dataset: Path, tmp_path: Path) -> None:
    """Episodes added after the checkpoint would redraw the train/validation split: validation would score
    episodes the checkpoint trained on."""
    cfg = _cfg(ramp_dataset, tmp_path / "run", num_steps=12, checkpoint_every=6)
    trainer = Trainer(cfg)
    trainer.train_step()
    trainer.checkpoint()
    ckpt = tmp_path / "run" / "checkpoints" / "train_00000001.pt"
    Trainer(cfg).load(ckpt)  # same data: resumes
    x = np.linspace(0.0, 1.0, 40, dtype=np.float32)
    write_episodes(ramp_dataset, [{"pos": np.stack([x, np.zeros(40, np.float32)], 1), "action": x[:, None]}])
    with pytest.raises(ConfigError, match=r"the dataset changed since this checkpoint \(40 episodes, 1600 steps; now 41, 1640\)"):
        Trainer(cfg).load(ckpt)


def test_a_non_finite_loss_stops_training_without_a_checkpoint(ramp_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(ramp_dataset, tmp_path / "run", num_steps=12, checkpoint_every=6))
    with torch.no_grad():
        next(trainer.policy.denoiser.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="the training loss is nan at step 1"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "policy.safetensors").exists()


def test_training_crops_at_random_and_evaluation_at_the_centre() -> None:
    from dp_core.config import ShapeMeta, VisionConfig
    from dp_core.models.obs_encoder import ObsEncoder

    encoder = ObsEncoder(ShapeMeta(obs={"img": ObsSpec("rgb", [16, 16, 3])}), VisionConfig(crop_shape=[10, 10]))
    seen: list[torch.Tensor] = []
    encoder.cameras["img"].register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    img = torch.rand(4, 2, 3, 16, 16)
    for seed in (0, 1, 0):
        encoder.train()(({"img": img}), torch.Generator().manual_seed(seed))
    assert seen[0].shape == (8, 3, 10, 10)
    assert torch.equal(seen[0], seen[2]) and not torch.equal(seen[0], seen[1])  # the generator decides
    centre = img.reshape(8, 3, 16, 16)[:, :, 3:13, 3:13]
    assert not all(torch.equal(seen[0][i], centre[i]) for i in range(8))
    encoder.eval()({"img": img}, torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1], centre)


def _image_cfg(data: Path, out: Path, **kw):
    obs = {"img": ObsSpec("rgb", [32, 32, 3]), "agent": ObsSpec("low_dim", [2])}
    return experiment(data, tiny_policy_config(obs, 2), out, batch_size=8, **kw)


def test_random_crop_draws_on_the_generator_device(image_dataset: Path, tmp_path: Path) -> None:
    """Training crops follow the step's generator: same seed, same loss; the run writes a loadable policy."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    losses = []
    for run in ("a", "b"):
        trainer = Trainer(_image_cfg(image_dataset, tmp_path / run, device=device, num_steps=4, checkpoint_every=4,
                                     val_every=4))
        losses.append([trainer.train_step() for _ in range(3)])
    assert losses[0] == losses[1]
    assert all(torch.isfinite(torch.tensor(losses[0])))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_cuda_training_run(image_dataset: Path, tmp_path: Path, precision: str) -> None:
    """A whole run on the GPU (fused AdamW, foreach EMA, bf16 autocast): checkpoints, validation, policy file."""
    path = train(_image_cfg(image_dataset, tmp_path / "run", device="cuda", mixed_precision=precision,
                            num_steps=6, checkpoint_every=3, val_every=3))
    policy = load_policy(path, device="cuda")
    obs = {"img": torch.randint(0, 255, (1, 2, 32, 32, 3), dtype=torch.uint8, device="cuda"),
           "agent": torch.randn(1, 2, 2, device="cuda")}
    assert torch.isfinite(policy.predict_action(obs)["action"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_cuda_graph_training_equals_eager(image_dataset: Path, tmp_path: Path, precision: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """train.cuda_graph replays the eager step: same random draws, losses and weights (TF32 off), and a
    resume from its checkpoint continues like the eager run."""
    from dp_core.weight_versions import module_tensors, weights_key

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    runs = {}
    for graph in (False, True):
        cfg = _image_cfg(image_dataset, tmp_path / f"graph{graph}", device="cuda", mixed_precision=precision,
                         num_steps=8, checkpoint_every=4, val_every=4, allow_tf32=False, cuda_graph=graph)
        trainer = Trainer(cfg)
        assert (trainer.graph_step is not None) == graph
        tensors = module_tensors(list(trainer.policy.modules()))
        keys = [weights_key(tensors)]
        losses = []
        for _ in range(4):
            losses.append(trainer.train_step())
            keys.append(weights_key(tensors))
        assert len(set(keys)) == 5  # each step, replayed too, is seen by the inference paths' weight copies
        trainer.checkpoint()
        losses += [trainer.train_step() for _ in range(4)]
        runs[graph] = (losses, trainer.policy.state_dict())
    tol = 1e-4 if precision == "no" else 2e-2
    (eager_losses, eager_w), (graph_losses, graph_w) = runs[False], runs[True]
    assert max(abs(a - b) / max(abs(a), 1e-3) for a, b in zip(eager_losses, graph_losses)) < tol
    assert all(torch.allclose(eager_w[k].float(), graph_w[k].float(), rtol=tol, atol=tol) for k in eager_w)
    resumed = Trainer(_image_cfg(image_dataset, tmp_path / "graphTrue", device="cuda", mixed_precision=precision,
                                 num_steps=8, checkpoint_every=4, val_every=4, allow_tf32=False, cuda_graph=True))
    resumed.load(tmp_path / "graphTrue" / "checkpoints" / "train_00000004.pt")
    again = [resumed.train_step() for _ in range(4)]
    assert max(abs(a - b) / max(abs(a), 1e-3) for a, b in zip(graph_losses[4:], again)) < tol


def test_cuda_graph_option_is_ignored_without_cuda(ramp_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(ramp_dataset, tmp_path / "run", num_steps=2, cuda_graph=True, device="cpu"))
    assert trainer.graph_step is None
    assert all(torch.isfinite(torch.tensor([trainer.train_step() for _ in range(2)])))


def test_capturable_learning_rate_stays_one_tensor_through_the_schedule() -> None:
    """A graph reads the learning rate from one tensor: the scheduler must fill that tensor, also after a
    state saved with a float (or a tensor read onto the CPU) is loaded."""
    from diffusers.optimization import get_scheduler

    from dp_core.train_graph import make_capturable

    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    make_capturable(opt, torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and opt.param_groups[0]["capturable"]
    sched = get_scheduler("cosine", opt, num_warmup_steps=4, num_training_steps=10)
    for step in range(1, 4):
        params[0].grad = torch.zeros(3)
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] is lr
        assert lr.item() == pytest.approx(1e-3 * step / 4)
    saved = torch.optim.AdamW(params, lr=5e-4).state_dict()  # float lr, no 'capturable'
    opt.load_state_dict(saved)
    make_capturable(opt, torch.device("cpu"))
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and opt.param_groups[0]["capturable"]


def test_graph_warm_up_is_undone(image_dataset: Path, tmp_path: Path) -> None:
    """The graph's warm-up steps are undone in place: the first real step equals a fresh optimiser's first
    step (the restore logic, checked on the CPU; capture itself needs CUDA)."""
    from dp_core.train_graph import GraphedTrainStep

    trainers = [Trainer(_image_cfg(image_dataset, tmp_path / f"r{i}", num_steps=4, device="cpu", lr_warmup_steps=0))
                for i in range(2)]
    warmed, fresh = trainers
    warmed.policy.load_state_dict(fresh.policy.state_dict())
    items = np.arange(8)
    for t in trainers:
        t.policy.train()
    step = GraphedTrainStep(warmed.policy, warmed.optimizer, 1.0, None)
    batch = warmed.train_set.batch(items)
    step.batch = batch
    params = list(warmed.policy.parameters())
    saved = [p.detach().clone() for p in params]
    for _ in range(2):
        warmed.optimizer.zero_grad(set_to_none=True)
        step._step()
    assert not all(torch.equal(p, s) for p, s in zip(params, saved))
    step._restore(params, saved, {})
    assert all(torch.equal(p, s) for p, s in zip(params, saved))
    for t in trainers:
        t.optimizer.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(5)
        t.policy(batch, gen).backward()
        t.optimizer.step()
    a, b = warmed.policy.state_dict(), fresh.policy.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_normaliser_sees_the_training_episodes_only(tmp_path: Path) -> None:
    episodes = []
    for i in range(20):  # episode i lives around x = 10 i
        x = i * 10.0 + 0.01 * np.arange(41)
        episodes.append({"pos": np.stack([x[:-1], np.zeros(40)], 1).astype(np.float32), "action": x[1:, None].astype(np.float32)})
    cfg = experiment(write_episodes(tmp_path / "d.zarr", episodes), tiny_policy_config({"pos": ObsSpec("low_dim", [2])}, 1),
                     tmp_path / "run", device="cpu")
    cfg.data.max_train_episodes = 2
    train_eps, _ = split_episodes(20, cfg.data)
    norm = Trainer(cfg).policy.normalizer.action
    span = norm.unnormalize(norm.scale.new_tensor([[-1.0], [1.0]]))[:, 0].tolist()
    actions = np.concatenate([episodes[i]["action"] for i in train_eps])
    assert span == pytest.approx([actions.min(), actions.max()], abs=1e-3)


def test_validation_episodes_too_short_for_a_window_mean_no_validation(tmp_path: Path) -> None:
    episodes = [{"pos": np.zeros((n, 2), np.float32), "action": np.zeros((n, 1), np.float32)} for n in [40] * 19 + [6]]
    cfg = experiment(write_episodes(tmp_path / "d.zarr", episodes), tiny_policy_config({"pos": ObsSpec("low_dim", [2])}, 1),
                     tmp_path / "run", device="cpu")
    cfg.data.val_ratio = 0.05  # one validation episode: pick a split that draws the short one
    cfg.data.split_seed = next(s for s in range(100) if split_episodes(20, replace(cfg.data, split_seed=s))[1].tolist() == [19])
    train, val, _ = build_datasets(cfg.data, cfg.policy)
    assert len(train) > 0 and val is None


def test_real_cell_config_trains_on_what_the_real_recorder_writes(tmp_path: Path) -> None:
    """config/ur5_image_unet.yaml reads the keys config/recorder_ur5.yaml records, and the policy it makes
    runs in the real cell's policy node (config/ur5_real.yaml's observations and action names)."""
    import yaml

    from dp_core.config import load_config
    from dp_core.control.policy_params import load_node_params, used_observations

    rec = yaml.safe_load((REPO / "config" / "recorder_ur5.yaml").read_text())["demo_recorder"]["ros__parameters"]
    h, w = rec["image_size"]
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(3):
        n = 20
        ep = {k: rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8) if t == "Image" else rng.normal(size=(n, d)).astype(np.float32)
              for k, t, d in zip(rec["obs_keys"], rec["obs_types"], rec["obs_dims"])}
        ep["action"] = rng.normal(size=(n, len(rec["action_names"]))).astype(np.float32)
        episodes.append(ep)
    data = write_episodes(tmp_path / "ur5.zarr", episodes)
    recorded = {"camera_0": {"height": 480, "width": 640, "serial": "111"},  # as the recorder stores them
                "camera_1": {"height": 480, "width": 640, "serial": "222"}}
    zarr.open_group(str(data), mode="a").attrs.update({"cameras": recorded, "control_dt": 1.0 / rec["rate_hz"]})
    cfg = load_config(REPO / "config" / "ur5_image_unet.yaml",
                      [f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "train.device=cpu",
                       "train.batch_size=2", "train.num_steps=1", "policy.unet.down_dims=[16,32,64]"])
    trainer = Trainer(cfg)
    assert np.isfinite(trainer.train_step())
    used = used_observations(load_node_params(REPO / "config" / "ur5_real.yaml"), cfg.policy.shape_meta)
    assert set(used) == {"camera_0", "camera_1", "robot_eef_pos"}
    # the policy file carries the recorded cameras, by observation key, for the policy node's check
    extra = policy_file_extra(trainer.save_ema_policy(tmp_path / "p.safetensors"))
    assert extra["cameras"] == {key: recorded[cfg.policy.shape_meta.obs[key].source] for key in ("camera_0", "camera_1")}
    # ... and the control period the data was recorded at: the node and dp-replay refuse to run it at another
    policy_path = tmp_path / "p.safetensors"
    assert extra["control_dt"] == pytest.approx(0.1)
    check_policy_period(policy_path, 0.1)
    with pytest.raises(ValueError, match=r"recorded every 0.1 s \(10 Hz\), not every 0.05 s"):
        check_policy_period(policy_path, 0.05)


def test_resume_changes_ignore_settings_one_version_lacks() -> None:
    from dp_core.train import resume_changes

    saved = {"train": {"lr": 1e-3, "num_workers": 0}, "policy": {"horizon": 16}}
    now = {"train": {"lr": 1e-3, "mixed_precision": "auto", "val_every": 5}, "policy": {"horizon": 8}}
    assert resume_changes(saved, now) == ["policy.horizon: 16 -> 8"]
