"""Several simulated cameras at 30 fps through the ROS 2 stack: dropped frames and synchronisation error, as JSON.

    python benchmarks/bench_cameras.py --cameras 2 --episode-s 20 --output benchmarks/results/cameras_sim_2x30.json

Needs the built workspace on the path (``ros2 launch dp_bringup ...``). Builds an image policy that
reads every camera (the ``pusht_image_unet_small`` preset with one ResNet per camera, random weights:
this measures timing, not task success), writes a node parameter file (config/pusht_sim.yaml with
the simulated cell publishing N free-running cameras, each one an input of the policy and recorded),
runs one episode of ``ur5_pusht.launch.py sim:=true`` with the bag recorder under its own
ROS_DOMAIN_ID, then reads the bag with ``bench_bag_timing``: per camera the frames, dropped frames
and delivery latency; across cameras the spread of the frame stamps in each observation the policy
used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bag_timing import camera_sync, camera_timing, command_timing

from dp_core.bag_io import BagReader
from dp_core.checkpoint import save_policy
from dp_core.config import ObsSpec, load_config
from dp_core.policy import DiffusionPolicy


def camera_policy(path: Path, cameras: int) -> tuple[list[str], int]:
    """A random-weight image policy reading ``cameras`` cameras; returns its camera keys and To."""
    cfg = load_config(REPO / "config" / "pusht_image_unet_small.yaml").policy
    obs = {k: v for k, v in cfg.shape_meta.obs.items() if v.type != "rgb"}
    keys = [f"image_{i}" for i in range(cameras)]
    for key in keys:
        obs[key] = ObsSpec("rgb", [96, 96, 3], source=key)
    cfg = replace(cfg, shape_meta=replace(cfg.shape_meta, obs=obs))
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.normalizer.fit({"agent_pos": rng.uniform(0, 512, (100, 2))}, rng.uniform(0, 512, (100, 2)))
    save_policy(policy, path)
    return keys, cfg.n_obs_steps


def parameter_file(path: Path, keys: list[str], episode_s: float, bag_topics: list[str]) -> None:
    params = yaml.safe_load((REPO / "config" / "pusht_sim.yaml").read_text())
    names = [f"camera_{i}" for i in range(len(keys))]
    params["pusht_sim"]["ros__parameters"].update(camera_names=names, episode_s=episode_s)
    policy = params["policy"]["ros__parameters"]
    policy.update(device="cpu", obs_keys=["agent_pos", *keys],
                  obs_topics=["/robot/tcp_pose", *(f"/{n}/color/image_raw" for n in names)],
                  obs_types=["PoseStamped", *(["Image"] * len(keys))])
    params["bag_recorder"]["ros__parameters"]["topics"] = bag_topics

    class Quoted(yaml.SafeDumper):  # rcl reads YAML 1.1: a bare y is a boolean (action_names: [x, y])
        pass

    Quoted.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style='"'))
    path.write_text(yaml.dump(params, Dumper=Quoted, sort_keys=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--episode-s", type=float, default=20.0, help="length of the simulated episode")
    parser.add_argument("--timeout-s", type=float, default=240.0)
    parser.add_argument("--keep", default=None, help="keep the policy, parameter file and bag in this folder")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.cameras < 1:
        parser.error("--cameras must be >= 1")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_cameras_"))
    work.mkdir(parents=True, exist_ok=True)
    keys, n_obs_steps = camera_policy(work / "policy.safetensors", args.cameras)
    cams = [f"/camera_{i}/color/image_raw" for i in range(args.cameras)]
    parameter_file(work / "params.yaml", keys, args.episode_s,
                   [*cams, "/robot/tcp_pose", "/robot/servo_target", "/policy/action_chunk", "/diagnostics"])
    bag = work / "bag"
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(100, 200)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    cmd = ["ros2", "launch", "dp_bringup", "ur5_pusht.launch.py", "sim:=true", "num_episodes:=1",
           f"checkpoint:={work / 'policy.safetensors'}", f"config:={work / 'params.yaml'}", f"bag:={bag}"]
    print(" ".join(cmd), file=sys.stderr)
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        print(f"bench_cameras: the launch did not finish within {args.timeout_s:.0f} s", file=sys.stderr)
        return 1
    if run.returncode != 0 or not bag.exists():
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
        print(f"bench_cameras: launch failed (exit {run.returncode})", file=sys.stderr)
        return 1
    params = yaml.safe_load((work / "params.yaml").read_text())
    rate = float(params["pusht_sim"]["ros__parameters"]["camera_rate_hz"])
    policy = params["policy"]["ros__parameters"]
    with BagReader(bag) as reader:
        report = {
            "cameras": args.cameras, "camera_rate_hz": rate, "episode_s": args.episode_s, "loadavg": os.getloadavg(),
            "policy": "pusht_image_unet_small with one ResNet per camera, random weights, CPU",
            "per_camera": [camera_timing(reader, t, rate) for t in cams],
            "executor": command_timing(reader, "/robot/servo_target",
                                       float(params["action_executor"]["ros__parameters"]["lead_time_s"])),
        }
        if args.cameras > 1:
            report["sync"] = camera_sync(reader, cams, "/policy/action_chunk", n_obs_steps, float(policy["dt"]))
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
