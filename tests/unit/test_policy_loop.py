import numpy as np
import pytest
import torch

from conftest import tiny_policy_config
from dp_core.config import ObsSpec
from dp_core.control.obs_buffer import RefusalKind
from dp_core.control.policy_loop import PolicyLoop
from dp_core.inference import PolicyRunner
from dp_core.policy import DiffusionPolicy


def _loop() -> PolicyLoop:
    torch.manual_seed(0)
    cfg = tiny_policy_config({"cam": ObsSpec("rgb", [32, 32, 3]), "pos": ObsSpec("low_dim", [2])}, 2)
    return PolicyLoop(PolicyRunner(DiffusionPolicy(cfg), dt=0.1, warm_start=True, seed=0), dt=0.1, max_age=0.25)


def test_chunk_from_aligned_observations_resizes_images() -> None:
    loop = _loop()
    assert loop.tick(now=0.0) is None and loop.refusal.kind is RefusalKind.EMPTY
    for i in range(10):  # camera at 30 Hz with a bigger frame, state at 100 Hz
        loop.add("cam", i / 30, np.zeros((64, 48, 3), np.uint8))
    for i in range(30):
        loop.add("pos", i / 100, np.array([i, -i], np.float32))
    chunk = loop.tick(now=0.35)
    assert chunk is not None and chunk.stamp == pytest.approx(0.29)  # the older of the two newest samples
    assert chunk.actions.shape == (16 - 1, 2) and not chunk.warm
    again = loop.tick(now=0.35)  # warm starts on, but the same newest time: no whole step elapsed, cold again
    assert not again.warm


def test_stale_observations_refused() -> None:
    loop = _loop()
    loop.add("cam", 0.0, np.zeros((32, 32, 3), np.uint8))
    loop.add("pos", 0.0, np.zeros(2, np.float32))
    loop.add("cam", 0.1, np.zeros((32, 32, 3), np.uint8))
    loop.add("pos", 0.1, np.zeros(2, np.float32))
    assert loop.tick(now=1.0) is None and loop.refusal.kind is RefusalKind.STALE


def test_wrong_low_dim_shape_rejected() -> None:
    with pytest.raises(ValueError, match="pos"):
        _loop().add("pos", 0.0, np.zeros(3, np.float32))


def test_frames_from_another_camera_are_refused() -> None:
    """The recorded camera (dp_core.camera_sources): another frame size or serial is refused, with why."""
    from dp_core.camera_sources import CameraSource

    torch.manual_seed(0)
    cfg = tiny_policy_config({"cam": ObsSpec("rgb", [32, 32, 3]), "pos": ObsSpec("low_dim", [2])}, 2)
    loop = PolicyLoop(PolicyRunner(DiffusionPolicy(cfg), dt=0.1, seed=0), dt=0.1, max_age=0.25,
                      cameras={"cam": CameraSource(48, 64, "111")})
    with pytest.raises(ValueError, match="serial is not known yet"):  # serial not confirmed yet
        loop.add("cam", 0.0, np.zeros((48, 64, 3), np.uint8))
    loop.set_serial("cam", "111")
    loop.add("cam", 0.0, np.zeros((48, 64, 3), np.uint8))  # the recorded camera: resized to 32 x 32 as before
    with pytest.raises(ValueError, match="'cam': frames are 64x48, recorded at 48x64; .*check_cameras: false"):
        loop.add("cam", 0.1, np.zeros((64, 48, 3), np.uint8))  # rotated: it would be squashed
    loop.add("cam", 0.1, np.zeros((48, 64, 3), np.uint8))
    loop.set_serial("cam", "222")  # the other camera's serial on this stream
    with pytest.raises(ValueError, match="camera serial 222, recorded from 111"):
        loop.add("cam", 0.2, np.zeros((48, 64, 3), np.uint8))
    loop.add("pos", 0.1, np.zeros(2, np.float32))  # other observations are not affected


def test_runner_hands_the_time_shifted_previous_chunk_to_a_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm start is the previous chunk moved by the elapsed steps (its tail padded with the last action),
    so that its actions keep their due times; too old a chunk gives a cold start."""
    policy = DiffusionPolicy(tiny_policy_config({"pos": ObsSpec("low_dim", [2])}, 1))  # horizon 16, To 2
    seen = []

    def predict(obs, warm_start=None, generator=None):
        seen.append(None if warm_start is None else warm_start[0, :, 0].tolist())
        return {"action_pred": torch.arange(16.0).reshape(1, 16, 1) + 100 * len(seen)}

    monkeypatch.setattr(policy, "predict_action", predict)
    runner = PolicyRunner(policy, dt=0.1, warm_start=True)
    obs = {"pos": np.zeros((2, 2), np.float32)}
    runner.infer(obs, 1.0)
    runner.infer(obs, 1.0 + 8 * 0.1 + 0.004)  # 8 steps later (stamps jitter)
    runner.infer(obs, 1.8 + 15 * 0.1)  # more than horizon - To steps: nothing left to reuse
    assert seen[0] is None and seen[2] is None
    assert seen[1] == [100.0 + k for k in range(8, 16)] + [115.0] * 8


def test_history_is_padded_with_the_oldest_observation_at_the_start() -> None:
    from dp_core.config import ActionSpec, ShapeMeta
    from dp_core.inference import stack_history

    meta = ShapeMeta(obs={"pos": ObsSpec("low_dim", [1])}, action=ActionSpec(1))
    steps = [{"pos": np.array([float(k)])} for k in range(3)]
    assert stack_history(steps[:1], meta, 3)["pos"][:, 0].tolist() == [0.0, 0.0, 0.0]
    assert stack_history(steps[:2], meta, 3)["pos"][:, 0].tolist() == [0.0, 0.0, 1.0]
    assert stack_history(steps, meta, 2)["pos"][:, 0].tolist() == [1.0, 2.0]  # oldest first, newest last


def test_runner_refuses_observations_of_another_shape() -> None:
    policy = DiffusionPolicy(tiny_policy_config({"img": ObsSpec("rgb", [32, 32, 3])}, 2))
    runner = PolicyRunner(policy, dt=0.1)
    with pytest.raises(ValueError, match=r"observation 'img' has shape \(2, 48, 48, 3\); the policy expects \(2, 32, 32, 3\)"):
        runner.infer({"img": np.zeros((2, 48, 48, 3), np.uint8)}, 0.0)


def test_bf16_off_cuda_warns_and_reports_fp32() -> None:
    from dp_core.fast_inference import InferenceOptions

    policy = DiffusionPolicy(tiny_policy_config({"pos": ObsSpec("low_dim", [2])}, 1))
    with pytest.warns(RuntimeWarning, match="bf16' applies on the fast path on CUDA"):
        policy.configure_inference(InferenceOptions(precision="bf16"))
    assert policy.inference_options.precision == "fp32"


def test_pusht_render_size_follows_the_policy() -> None:
    from dp_core.config import ActionSpec, ShapeMeta
    from dp_core.eval_pusht import pusht_render_size

    assert pusht_render_size(ShapeMeta(obs={"pos": ObsSpec("low_dim", [2])}, action=ActionSpec(2))) == 0
    assert pusht_render_size(ShapeMeta(obs={"img": ObsSpec("rgb", [64, 64, 3])}, action=ActionSpec(2))) == 64
    with pytest.raises(ValueError, match="square"):
        pusht_render_size(ShapeMeta(obs={"img": ObsSpec("rgb", [64, 80, 3])}, action=ActionSpec(2)))
