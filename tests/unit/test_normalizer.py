import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dp_core.normalizer import Normalizer, RangeNormalizer

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 50), st.integers(1, 5)), elements=finite))
def test_round_trip_and_range(data: np.ndarray) -> None:
    norm = RangeNormalizer(data.shape[1]).fit(data)
    x = torch.from_numpy(data)
    y = norm(x)
    assert torch.all(y >= -1 - 1e-4) and torch.all(y <= 1 + 1e-4)
    back = norm.unnormalize(y)
    tol = 1e-4 * (1 + np.abs(data).max())
    assert torch.allclose(back, x, atol=tol)


def test_extremes_map_to_minus_one_and_one_and_constants_to_zero() -> None:
    data = np.array([[0.0, 5.0], [10.0, 5.0], [5.0, 5.0]], np.float32)
    norm = RangeNormalizer(2).fit(data)
    y = norm(torch.from_numpy(data))
    assert torch.allclose(y[:, 0], torch.tensor([-1.0, 1.0, 0.0]))
    assert torch.allclose(y[:, 1], torch.zeros(3))


def test_stats_live_in_state_dict_and_images_go_to_unit_range() -> None:
    n = Normalizer({"pos": 3}, 2)
    assert {"streams.pos.scale", "streams.pos.offset", "action.scale", "action.offset"} <= set(n.state_dict())
    img = torch.full((1, 2, 4, 4, 3), 255, dtype=torch.uint8)
    out = n.normalize_obs({"cam": img})["cam"]
    assert out.shape == (1, 2, 3, 4, 4) and torch.all(out == 1.0)


def test_float_images_are_scaled_without_touching_the_callers_tensor() -> None:
    img = torch.full((1, 2, 4, 4, 3), 204.0)  # 0-255 float, e.g. from torch.as_tensor of the caller's numpy array
    for _ in range(2):  # the same observation twice, as a control loop may pass it
        out = Normalizer({}, 2).normalize_obs({"cam": img})["cam"]
        assert torch.allclose(out, torch.tensor(0.8)) and torch.all(img == 204.0)
