import pytest
import yaml

pytest.importorskip("launch_ros")

from dp_bringup.launch_helpers import parse_serials, real_cell_nodes, truthy  # noqa: E402


def test_truthy_and_serials() -> None:
    assert [truthy(v) for v in ("true", " True", "1", "on", "false", "0", "")] == [True] * 4 + [False] * 3
    assert parse_serials("['123456789012', \"210987654321\"]") == ["123456789012", "210987654321"]
    assert parse_serials("123, 456") == ["123", "456"] and parse_serials("[]") == []


def _text(value):
    """launch_ros stores parameter values as (lists of) YAML-text substitutions; give back the values."""
    if all(hasattr(v, "text") for v in value):
        return yaml.safe_load("".join(v.text for v in value))
    return [_text(v) for v in value]


def _overrides(node) -> dict:
    params = node._Node__parameters
    return {"".join(t.text for t in k): _text(v) for p in params if isinstance(p, dict) for k, v in p.items()}


def test_real_cell_nodes_need_a_robot_ip_and_pass_the_serials() -> None:
    with pytest.raises(RuntimeError, match="robot_ip"):
        real_cell_nodes("/share", "", "", {})
    driver, cameras = real_cell_nodes("/share", "192.168.1.10", "['111', '222']", {"output": "screen"})
    assert (driver.node_executable, cameras.node_executable) == ("ur_driver", "cameras")
    assert _overrides(driver) == {"robot_ip": "192.168.1.10"}
    assert _overrides(cameras) == {"serials": ["111", "222"]}
    _, no_serials = real_cell_nodes("/share", "10.0.0.2", "", {})
    assert _overrides(no_serials) == {}  # the cameras.yaml file only


def test_first_cell_seed_continues_after_the_datasets_episodes(tmp_path) -> None:
    import numpy as np
    import pytest

    from dp_bringup.launch_helpers import first_cell_seed
    from dp_core.episode_store import EpisodeStore

    from dp_core.recording import EpisodeWriter

    path = tmp_path / "demos.zarr"
    assert first_cell_seed("", str(path)) == 0  # a new dataset
    EpisodeWriter(path).close()  # created by a recorder that committed nothing
    assert first_cell_seed("", str(path)) == 0
    store = EpisodeStore.open(path, mode="a")
    for _ in range(3):
        store.add_episode({"action": np.zeros((4, 2), np.float32)})
    assert first_cell_seed("", str(path)) == 3  # the next session starts from states not yet recorded
    assert first_cell_seed("7", str(path)) == 7
    with pytest.raises(RuntimeError, match="not an integer"):
        first_cell_seed("x", str(path))
