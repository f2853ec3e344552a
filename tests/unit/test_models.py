import pytest
import torch
from conftest import tiny_policy_config

from dp_core.config import ObsSpec, TransformerConfig
from dp_core.fast_inference import InferenceOptions
from dp_core.models import ConditionalUnet1D, TransformerDenoiser
from dp_core.models.vision import ResNetEncoder, crop_images
from dp_core.policy import DiffusionPolicy, shift_chunk


def test_unet_shapes_and_conditioning_matters() -> None:
    net = ConditionalUnet1D(action_dim=3, cond_dim=10, down_dims=[16, 32, 64], step_embed_dim=16)
    x, t = torch.randn(4, 16, 3), torch.tensor([0, 10, 50, 99])
    c = torch.randn(4, 10)
    out = net(x, t, c)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, c + 1.0))
    assert not torch.allclose(out, net(x, t + 1, c))


def test_transformer_is_causal_over_actions() -> None:
    torch.manual_seed(0)
    net = TransformerDenoiser(2, obs_feature_dim=5, horizon=8, n_obs_steps=2, n_layer=2, n_head=2, n_emb=16, p_drop_attn=0.0).eval()
    x, t, obs = torch.randn(1, 8, 2), torch.tensor([5]), torch.randn(1, 2, 5)
    out = net(x, t, obs)
    x2 = x.clone()
    x2[:, 5:] += 1.0  # change the future
    out2 = net(x2, t, obs)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])
    obs2 = obs.clone()
    obs2[:, 1] += 1.0  # obs step 1 is visible from action 1 on, not to action 0
    out3 = net(x, t, obs2)
    assert torch.allclose(out[:, 0], out3[:, 0], atol=1e-6) and not torch.allclose(out[:, 1:], out3[:, 1:])


def test_resnet_uses_group_norm_and_spatial_softmax() -> None:
    enc = ResNetEncoder(num_keypoints=8, feature_dim=16)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in enc.modules())
    assert enc(torch.rand(2, 3, 84, 84)).shape == (2, 16)


def test_crop_random_in_training_center_in_eval() -> None:
    img = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    center = crop_images(img, (4, 4), random=False)
    assert torch.equal(center, img[:, :, 1:5, 1:5])
    g = torch.Generator().manual_seed(0)
    crops = [crop_images(img, (4, 4), random=True, generator=g) for _ in range(20)]
    valid = {(r, c) for r in range(3) for c in range(3)}
    seen = set()
    for crop in crops:
        for i in range(2):
            r, c = divmod(int(crop[i, 0, 0, 0].item() - img[i, 0, 0, 0].item()), 6)
            assert (r, c) in valid and torch.equal(crop[i], img[i, :, r : r + 4, c : c + 4])
            seen.add((r, c))
    assert len(seen) > 3


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_observations_encoded_once_per_chunk(denoiser: str, fast: bool) -> None:
    cfg = tiny_policy_config(
        {"cam": ObsSpec("rgb", [32, 32, 3]), "pos": ObsSpec("low_dim", [2])}, 2,
        denoiser=denoiser, transformer=TransformerConfig(n_layer=1, n_head=2, n_emb=16),
    )
    policy = DiffusionPolicy(cfg).eval()
    policy.configure_inference(InferenceOptions(fast=fast))
    calls = {"encoder": 0, "denoiser": 0}
    policy.obs_encoder.register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    policy.denoiser.register_forward_hook(lambda *_: calls.__setitem__("denoiser", calls["denoiser"] + 1))
    if fast and denoiser == "unet":  # the fast UNet evaluates the module's layers step by step
        sampler = policy._fast
        step = sampler._unet_step
        sampler._unet_step = lambda *a: (calls.__setitem__("denoiser", calls["denoiser"] + 1), step(*a))[1]
    obs = {"cam": torch.randint(0, 255, (3, 2, 32, 32, 3), dtype=torch.uint8), "pos": torch.randn(3, 2, 2)}
    out = policy.predict_action(obs, num_inference_steps=10)
    assert calls == {"encoder": 1, "denoiser": 10}
    assert out["action_pred"].shape == (3, 16, 2) and out["action"].shape == (3, 8, 2)
    assert torch.equal(out["action"], out["action_pred"][:, 1:9])


def test_shift_chunk_pads_with_last_action() -> None:
    chunk = torch.arange(5.0).reshape(1, 5, 1)
    assert shift_chunk(chunk, 2)[0, :, 0].tolist() == [2, 3, 4, 4, 4]
    assert shift_chunk(chunk, 9)[0, :, 0].tolist() == [4, 4, 4, 4, 4]
