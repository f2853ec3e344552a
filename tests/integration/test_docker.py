"""The Docker image, built for real on a local Debian base (ROS 2 from the PyPI wheels), and run.

scripts/docker.sh installs docker.io and starts dockerd where they are missing (as root); the tests
skip only where Docker cannot run at all (exit status 77 with the reason). Building the image the
first time downloads torch with its CUDA libraries (several GB); later builds reuse the layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pusht_launch_log import check_pushes_block_to_goal

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker.sh"
COMPOSE = REPO / "docker" / "compose.yaml"
TAG = "dp_bringup:test"
CANNOT = 77


def script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def docker_client() -> str:
    return os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker")


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    out = subprocess.run([docker_client(), *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout


def domain_id() -> str:
    return str(110 + os.getpid() % 40)


@pytest.fixture(scope="module")
def image() -> str:
    ensure = script("ensure", timeout=600)
    if ensure.returncode == CANNOT:
        pytest.skip(ensure.stderr.strip())
    assert ensure.returncode == 0, ensure.stdout + ensure.stderr
    start = time.monotonic()
    build = script("build", "--debian-base", "--tag", TAG, timeout=3600)
    if build.returncode == CANNOT:
        pytest.skip(build.stderr.strip())
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}"
    print(f"image {TAG} built in {time.monotonic() - start:.0f} s: {build.stdout.strip().splitlines()[-1]}")
    return TAG


def test_lint_dockerfile_and_compose() -> None:
    lint = script("lint", timeout=600)
    if lint.returncode == CANNOT:
        pytest.skip(lint.stderr.strip())
    assert lint.returncode == 0, lint.stdout + lint.stderr
    print(lint.stdout)


def test_image_runs_as_non_root_with_cuda_torch(image: str) -> None:
    out = docker("run", "--rm", "--network", "none", image, "python", "-c",
                 "import os, shutil, sysconfig, torch, rclpy, triton; print(os.getuid(), torch.__version__, torch.version.cuda,"
                 " bool(shutil.which('cc')), os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))")
    uid, torch_version, cuda, cc, headers = out.split()
    assert uid != "0", "the image must run as a non-root user"
    assert cuda != "None", f"torch {torch_version} in the image is a CPU-only build"
    assert cc == headers == "True", "Triton builds its launcher at run time: the image needs a C compiler and Python.h"
    print(f"uid {uid}, torch {torch_version}, CUDA {cuda}")


def test_sim_stack_in_container_pushes_block_to_goal(image: str) -> None:
    """One scored episode of the simulated stack with the bundled model, loopback only, healthcheck on."""
    name = f"dp-test-sim-{os.getpid()}"
    docker("run", "-d", "--name", name, "--network", "none", "-e", f"ROS_DOMAIN_ID={domain_id()}",
           "-e", "DP_HEALTH_NODES=policy,action_executor,pusht_sim",
           "--health-interval", "10s", "--health-timeout", "30s", "--health-start-period", "5s",
           image, "ur5_pusht.launch.py", "num_episodes:=1", "seed:=100000", "device:=cpu")
    try:
        health: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = json.loads(docker("inspect", "--format", "{{json .State}}", name))
            if state.get("Health"):
                health.append(state["Health"]["Status"])
            if not state["Running"]:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the container did not finish in 180 s; log:\n{docker('logs', name)[-4000:]}")
        logs = subprocess.run([docker_client(), "logs", name], capture_output=True, text=True, timeout=30)
        text = logs.stdout + logs.stderr
        assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}; log:\n{text[-4000:]}"
        print(check_pushes_block_to_goal(text))
        print(f"health states seen: {sorted(set(health))}")
        assert "healthy" in health, f"never healthy ({health}); last check: {state.get('Health', {}).get('Log', [])[-1:]}"
    finally:
        docker("rm", "-f", name, check=False)


def test_record_service_writes_dataset(image: str, tmp_path: Path) -> None:
    """The compose `record` service (simulated cell, scripted input) writes a dataset into the volume.

    Runs docker/compose.yaml's service as it is (host network: loopback discovery, own domain id):
    the scripted input re-enacts one Push-T demonstration, then the launch ends; stopped with SIGINT
    (as `docker compose stop` does) if it runs longer than 180 s.
    """
    from conftest import PUSHT_ZARR
    from dp_core.dataset import EpisodeStore

    if not PUSHT_ZARR.exists():
        pytest.skip(f"Push-T demonstrations not found: {PUSHT_ZARR}")

    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose missing: scripts/docker.sh lint installs it (test_lint_dockerfile_and_compose)")
    data = tmp_path / "datasets"
    data.mkdir()
    data.chmod(0o777)  # the container's user (uid 1000) writes here
    shutil.copytree(PUSHT_ZARR, data / "pusht.zarr")  # the demonstrations the script re-enacts (32 MB)
    for folder in ("usb", "udev"):  # no host devices needed: keep the binds off the host's /dev and /run
        (tmp_path / folder).mkdir()
    compose = ["docker-compose", "-f", str(COMPOSE), "-p", f"dptest{os.getpid()}", "--profile", "record"]
    env = {**os.environ, "DP_IMAGE": image, "DP_DATA_DIR": str(data), "DP_CKPT_DIR": str(tmp_path / "checkpoints"),
           "DP_USB_DIR": str(tmp_path / "usb"), "DP_UDEV_DIR": str(tmp_path / "udev"), "DP_DATASET": "demos.zarr",
           "DP_RECORD_SIM": "true", "DP_RECORD_INPUT": "scripted",
           "DP_DEMO_DATASET": "/datasets/pusht.zarr", "DP_NUM_DEMOS": "1",
           "ROS_DOMAIN_ID": domain_id(), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}

    def compose_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], capture_output=True, text=True, env=env, timeout=timeout)

    up = compose_run("up", "-d", "record")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        container = compose_run("ps", "-q", "record").stdout.strip()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and json.loads(docker("inspect", "--format", "{{json .State.Running}}", container)):
            time.sleep(2)
        compose_run("stop", "record")
        logs = compose_run("logs", "--no-color", "record")
        text = logs.stdout + logs.stderr
        store_path = data / "demos.zarr"
        assert store_path.exists(), f"no dataset in the mounted volume; log:\n{text[-4000:]}"
        store = EpisodeStore.open(store_path)
        assert store.n_episodes >= 1, f"dataset without episodes; log:\n{text[-4000:]}"
        assert "Traceback" not in text, text[-4000:]
        print(f"{store.n_episodes} episode(s), {store.n_steps} steps, keys {store.keys()}")
    finally:
        compose_run("down", "--remove-orphans")
