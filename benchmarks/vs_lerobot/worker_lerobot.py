"""Benchmark worker for LeRobot's diffusion policy (lerobot 0.4.4), run in the LeRobot venv.

The policy is built with random weights (no pretrained backbone, no hub access) and the
sizes of our case (``case["model"]``, derived by the driver from our config):

* Inference ``path: e2e`` times one chunk-generating step of LeRobot's own rollout
  (``lerobot_eval.rollout``): ``preprocess_observation`` on the gym-style numpy frame, the
  policy preprocessor (batch, device, normalise), ``select_action`` with an empty action
  queue (stacks the observation queue and runs ``generate_actions``: encoder + DDIM loop),
  the postprocessor (unnormalise, to CPU) and ``.numpy()``.
  ``path: model`` times ``policy.diffusion.generate_actions`` on a prepared device batch.
* Training times ``lerobot_train.update_policy`` (forward loss, accelerator backward, grad
  clipping, Adam, LR schedule) after the policy preprocessor on a CPU batch, as its loop does.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch
from common import Bench, obs_history, param_count, serve, train_batch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.envs.utils import preprocess_observation
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import (
    make_diffusion_pre_post_processors,
)
from lerobot.utils.constants import ACTION, OBS_IMAGES


def image_feature(model: dict, key: str) -> str:
    return "observation.image" if len(model["cameras"]) == 1 else f"{OBS_IMAGES}.{key}"


def build_config(model: dict, steps: int, device: str) -> DiffusionConfig:
    """Our sizes in LeRobot's terms (the driver has checked what cannot be expressed)."""
    h, w, c = model["image_shape"] if model["cameras"] else (0, 0, 0)
    inputs = {image_feature(model, k): PolicyFeature(FeatureType.VISUAL, (c, h, w)) for k in model["cameras"]}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (model["low_dims"][model["state_key"]],))
    env_dim = sum(d for k, d in model["low_dims"].items() if k != model["state_key"])
    if env_dim:
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (env_dim,))
    return DiffusionConfig(
        device=device,
        n_obs_steps=model["n_obs_steps"],
        horizon=model["horizon"],
        n_action_steps=model["n_action_steps"],
        input_features=inputs,
        output_features={ACTION: PolicyFeature(FeatureType.ACTION, (model["action_dim"],))},
        vision_backbone="resnet18",
        pretrained_backbone_weights=None,
        use_group_norm=True,
        crop_shape=tuple(model["crop_shape"]) if model["crop_shape"] else None,
        crop_is_random=True,
        spatial_softmax_num_keypoints=model["num_keypoints"],
        use_separate_rgb_encoder_per_camera=True,  # ours: one ResNet per camera
        down_dims=tuple(model["down_dims"]),
        kernel_size=model["kernel_size"],
        n_groups=model["n_groups"],
        diffusion_step_embed_dim=model["step_embed_dim"],
        use_film_scale_modulation=True,  # ours: FiLM scale and bias
        noise_scheduler_type="DDIM",
        num_train_timesteps=model["num_train_timesteps"],
        beta_schedule=model["beta_schedule"],
        clip_sample=model["clip_sample"],
        prediction_type="epsilon",
        num_inference_steps=steps,
    )


def dataset_stats(cfg: DiffusionConfig) -> dict:
    """Plausible normalisation statistics (the weights are random anyway)."""
    stats = {}
    for key, ft in {**cfg.input_features, **cfg.output_features}.items():
        if ft.type is FeatureType.VISUAL:
            stats[key] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                          "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
        else:
            d = ft.shape[0]
            stats[key] = {"min": torch.zeros(d), "max": torch.full((d,), 512.0),
                          "mean": torch.full((d,), 256.0), "std": torch.full((d,), 128.0)}
    return stats


def gym_frame(model: dict, obs: dict[str, np.ndarray], i: int) -> dict:
    """Step ``i`` of our observation history as a one-env gym vector observation."""
    frame: dict = {}
    cams = model["cameras"]
    if len(cams) == 1:
        frame["pixels"] = obs[cams[0]][i : i + 1]
    elif cams:
        frame["pixels"] = {k: obs[k][i : i + 1] for k in cams}
    frame["agent_pos"] = obs[model["state_key"]][i : i + 1]
    others = [obs[k][i : i + 1] for k in model["low_dims"] if k != model["state_key"]]
    if others:
        frame["environment_state"] = np.concatenate(others, axis=-1)
    return frame


def lerobot_batch(model: dict, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Our synthetic training batch in LeRobot's dataset format (images float CHW in [0, 1])."""
    out = {}
    for key in model["cameras"]:
        out[image_feature(model, key)] = torch.from_numpy(batch["obs"][key]).permute(0, 1, 4, 2, 3).float() / 255
    out["observation.state"] = torch.from_numpy(batch["obs"][model["state_key"]])
    others = [batch["obs"][k] for k in model["low_dims"] if k != model["state_key"]]
    if others:
        out["observation.environment_state"] = torch.from_numpy(np.concatenate(others, axis=-1))
    out[ACTION] = torch.from_numpy(batch["action"])
    out["action_is_pad"] = torch.zeros(batch["action"].shape[:2], dtype=torch.bool)
    return out


class LeRobotBench(Bench):
    def setup(self, case: dict) -> dict:
        model = case["model"]
        if self.device.type == "cuda":  # as lerobot_train.train and lerobot_eval.eval_main set them
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
        cfg = build_config(model, case.get("steps", 16), case["device"])
        self.policy = DiffusionPolicy(cfg).to(self.device)
        self.pre, self.post = make_diffusion_pre_post_processors(cfg, dataset_stats(cfg))
        info = {"params": param_count(self.policy), "scheduler": type(self.policy.diffusion.noise_scheduler).__name__}
        if case["task"] == "infer":
            self.policy.eval()
            obs = obs_history(model)
            frames = [gym_frame(model, obs, i) for i in range(model["n_obs_steps"])]
            self.policy.reset()
            with torch.inference_mode():
                for frame in frames:  # fills the observation queue like the first rollout steps
                    self.policy.select_action(self.pre(preprocess_observation(frame)))
            self.frame = frames[-1]
            if case["path"] == "e2e":
                self.fn = self._rollout_chunk
                info["entry"] = "rollout step with chunk generation (select_action)"
            else:
                # The observation queue after the rollout steps above, stacked as predict_action_chunk does.
                self.stacked = {k: torch.stack(list(q), dim=1) for k, q in self.policy._queues.items() if k != ACTION}
                self.fn = self._generate
                info["entry"] = "diffusion.generate_actions"
            return info
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from lerobot.scripts.lerobot_train import update_policy
        from lerobot.utils.logging_utils import AverageMeter, MetricsTracker

        # One Accelerator per case, as in one lerobot-train run: its state is a process-wide singleton
        # that refuses another mixed-precision setting.
        AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            step_scheduler_with_optimizer=False,
            cpu=self.device.type == "cpu",
            mixed_precision="bf16" if case["precision"] == "bf16" else "no",
        )
        optimizer = cfg.get_optimizer_preset().build(self.policy.get_optim_params())
        scheduler = cfg.get_scheduler_preset().build(optimizer, 1_000_000)
        self.policy, self.optimizer, self.scheduler = self.accelerator.prepare(self.policy, optimizer, scheduler)
        meters = {k: AverageMeter(k, ":.3f") for k in ("loss", "grad_norm", "lr", "update_s", "dataloading_s")}
        self.metrics = MetricsTracker(case["batch_size"], 100_000, 100, meters, accelerator=self.accelerator)
        self.update_policy = update_policy
        self.grad_clip = cfg.get_optimizer_preset().grad_clip_norm
        self.cpu_batch = lerobot_batch(model, train_batch(model, case["batch_size"]))
        if self.device.type == "cuda":  # LeRobot's DataLoader pins memory on CUDA
            self.cpu_batch = {k: v.pin_memory() for k, v in self.cpu_batch.items()}
        self.fn = self._train_step
        info.update(entry="lerobot_train.update_policy", ema=False)
        return info

    @torch.inference_mode()
    def _rollout_chunk(self) -> None:
        self.policy._queues[ACTION].clear()  # as every n_action_steps-th rollout step
        observation = self.pre(preprocess_observation(self.frame))
        action = self.post(self.policy.select_action(observation))
        action.to("cpu").numpy()

    @torch.inference_mode()
    def _generate(self) -> None:
        self.policy.diffusion.generate_actions(self.stacked)

    def _train_step(self) -> None:
        batch = self.pre(dict(self.cpu_batch))
        self.update_policy(self.metrics, self.policy, batch, self.optimizer, self.grad_clip,
                           accelerator=self.accelerator, lr_scheduler=self.scheduler)

    def call(self) -> None:
        self.fn()


if __name__ == "__main__":
    serve(LeRobotBench())
