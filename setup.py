"""dp_bringup: one ament_python package holding the ROS-free core (dp_core) and the ROS 2 nodes."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dp_bringup"


def share(folder: str) -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{folder}", [p for p in glob(f"{folder}/*") if not p.endswith(".md") or folder == "models"])


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages("src"),
    package_dir={"": "src"},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        share("launch"),
        share("config"),
        share("models"),
    ],
    install_requires=["setuptools"],
    python_requires=">=3.11",
    zip_safe=True,
    maintainer="dp_bringup maintainers",
    maintainer_email="maintainers@dp-bringup.dev",
    description="Diffusion Policy on ROS 2: ROS-free core library plus nodes, launch files and configs.",
    license="MIT",
    entry_points={
        "console_scripts": [
            "dp-train = dp_core.train:main",
            "dp-eval = dp_core.eval_pusht:main",
            "dp-export = dp_core.checkpoint:main",
            "dp-bag = dp_core.bag_io:main",
            "dp-bag2zarr = dp_core.bag_convert:main",
            "dp-replay = dp_core.replay:main",
            "pusht_sim = dp_bringup.nodes.pusht_sim_node:main",
            "policy_node = dp_bringup.nodes.policy_node:main",
            "action_executor = dp_bringup.nodes.executor_node:main",
            "ur_driver = dp_bringup.nodes.ur_driver_node:main",
            "cameras = dp_bringup.nodes.camera_node:main",
            "bag_recorder = dp_bringup.nodes.bag_recorder_node:main",
            "bag_player = dp_bringup.nodes.bag_player_node:main",
            "spacemouse = dp_bringup.nodes.spacemouse_node:main",
            "teleop = dp_bringup.nodes.teleop_node:main",
            "demo_recorder = dp_bringup.nodes.demo_recorder_node:main",
            "scripted_teleop = dp_bringup.nodes.scripted_teleop_node:main",
            "dp-healthcheck = dp_bringup.healthcheck:main",
        ],
    },
)
