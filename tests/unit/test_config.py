from pathlib import Path

import pytest

from dp_core.config import ConfigError, ExperimentConfig, PolicyConfig, from_dict, load_config

REPO = Path(__file__).resolve().parents[2]


# experiment configs, not node parameter files (ros__parameters) or bag conversion configs (bag_*.yaml)
EXPERIMENTS = [p for p in sorted((REPO / "config").glob("*.yaml"))
               if "ros__parameters" not in p.read_text() and not p.name.startswith("bag_")]


def test_experiment_configs_found() -> None:
    assert len(EXPERIMENTS) >= 5, [p.name for p in EXPERIMENTS]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_bundled_experiment_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.policy.horizon >= cfg.policy.n_action_steps


def test_paper_defaults() -> None:
    cfg = PolicyConfig()
    assert (cfg.n_obs_steps, cfg.horizon, cfg.n_action_steps) == (2, 16, 8)
    assert cfg.diffusion.num_train_timesteps == 100
    assert cfg.diffusion.beta_schedule == "squaredcos_cap_v2"
    assert cfg.unet.down_dims == [256, 512, 1024] and cfg.unet.kernel_size == 5 and cfg.unet.n_groups == 8
    assert (cfg.transformer.n_layer, cfg.transformer.n_head, cfg.transformer.n_emb) == (8, 4, 256)


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("policy:\n  unet:\n    down_dim: [1, 2]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "policy.unet.down_dim" in msg and "down_dims" in msg and str(p) in msg


def test_bad_type_and_choice_are_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        from_dict(ExperimentConfig, {"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"policy\.denoiser"):
        from_dict(ExperimentConfig, {"policy": {"denoiser": "lstm"}})


def test_inconsistent_horizons_rejected() -> None:
    with pytest.raises(ConfigError, match="n_action_steps"):
        from_dict(PolicyConfig, {"horizon": 8, "n_obs_steps": 2, "n_action_steps": 8})
    for steps in ({"n_action_steps": 0}, {"n_action_steps": -3}, {"n_obs_steps": 0}):
        with pytest.raises(ConfigError, match="must be >= 1"):
            from_dict(PolicyConfig, steps)


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("policy:\n  shape_meta:\n    obs:\n      agent_pos: {type: low_dim, source: state}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: policy\.shape_meta\.obs\.agent_pos: missing required key\(s\) shape"):
        load_config(p)


def test_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batch_size: 8\n")
    cfg = load_config(p, ["train.batch_size=32", "policy.unet.down_dims=[8,16]", "name=x"])
    assert cfg.train.batch_size == 32 and cfg.policy.unet.down_dims == [8, 16] and cfg.name == "x"
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(p, ["train.nope=1"])


def test_values_that_would_fail_mid_training_are_refused_up_front(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  mixed_precision: no\n")  # YAML 1.1 reads a bare no as false
    assert load_config(cfg).train.mixed_precision == "no"
    for override, message in [
        ("train.val_every=0", r"train.val_every must be >= 1; got 0"),
        ("train.lr_scheduler=cosin", r"train.lr_scheduler: 'cosin' is not one of \['constant'"),
        ("policy.diffusion.num_inference_steps=200", r"num_inference_steps \(200\) must be <= num_train_timesteps \(100\)"),
        ("policy.diffusion.warm_start_strength=0.05", r"warm_start_steps / warm_start_strength \(160 steps"),
        ("policy.diffusion.beta_schedule=cosine", r"policy.diffusion: beta_schedule 'cosine' is not one of"),
        ("policy.unet.n_groups=5", r"policy.unet: down_dims \[256, 512, 1024\] must be .* divisible by n_groups \(5"),
        ("policy.unet.kernel_size=4", r"policy.unet: kernel_size must be odd"),
        ("policy.unet.step_embed_dim=63", r"policy.unet: step_embed_dim must be even"),
        ("policy.transformer.n_head=3", r"policy.transformer: need n_layer >= 1 and an even n_emb divisible by n_head"),
        ("policy.vision.group_norm_channels=24", r"policy.vision: group_norm_channels must divide 64"),
        ("policy.vision.crop_shape=[84]", r"policy.vision: crop_shape must be \[H, W\]"),
        ("train.grad_clip=0", r"train.grad_clip must be > 0"),
        ("data.val_ratio=1.5", r"data: val_ratio must be in \[0, 1\)"),
        ("data.max_train_episodes=-1", r"data: max_train_episodes must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(cfg, [override])


def test_crop_larger_than_an_image_is_refused() -> None:
    p = load_config(REPO / "config" / "pusht_image_unet_small.yaml")
    with pytest.raises(ConfigError, match=r"vision.crop_shape \[100, 84\] is larger than observation 'image' \(96 x 96\)"):
        load_config(REPO / "config" / "pusht_image_unet_small.yaml", ["policy.vision.crop_shape=[100, 84]"])
    assert p.policy.vision.crop_shape == [84, 84]


def test_override_under_an_empty_section(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("policy:\n  # nothing here yet\ntrain:\n")
    assert load_config(p, ["policy.horizon=32", "train.num_steps=5"]).policy.horizon == 32


def test_home_in_paths_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bash does not expand ~ in data.path=~/demos.zarr (not a variable assignment): the config does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  output_dir: ~/runs/a\n")
    loaded = load_config(cfg, ["data.path=~/demos/pusht.zarr"])
    assert loaded.data.path == str(tmp_path / "demos/pusht.zarr") and loaded.train.output_dir == str(tmp_path / "runs/a")
