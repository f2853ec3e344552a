"""Every key of the shipped node parameter files is a parameter its node declares: nodes stop on undeclared
parameters (dp_bringup.node_runner.check_parameters), and the hardware nodes are not started by the tests."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from dp_core.control.policy_params import PolicyNodeParams

NODES = REPO / "src" / "dp_bringup" / "nodes"
MODULES = {  # node name in the parameter files -> module (launch files give these names)
    "policy": "policy_node", "action_executor": "executor_node", "pusht_sim": "pusht_sim_node",
    "ur_driver": "ur_driver_node", "cameras": "camera_node", "bag_recorder": "bag_recorder_node",
    "spacemouse": "spacemouse_node", "teleop": "teleop_node", "demo_recorder": "demo_recorder_node",
    "scripted_teleop": "scripted_teleop_node",
}


def declared(module: str) -> set[str]:
    """Names a node module declares: keys of its DEFAULTS dict and first arguments of declare_parameter."""
    if module == "policy_node":  # declared from the dataclass fields
        return {f.name for f in dataclasses.fields(PolicyNodeParams)}
    names = set()
    for node in ast.walk(ast.parse((NODES / f"{module}.py").read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DEFAULTS" for t in node.targets):
            names |= {k.value for k in node.value.keys}
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "DEFAULTS":
            names |= {k.value for k in node.value.keys}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "declare_parameter"
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    assert names, f"found no parameters declared in {module}"
    return names


def sections() -> list[tuple[str, str, dict]]:
    out = []
    for path in sorted((REPO / "config").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        for name, section in data.items():
            if isinstance(section, dict) and "ros__parameters" in section:
                out.append((path.name, name, section["ros__parameters"] or {}))
    return out


@pytest.mark.parametrize("file, node, params", sections(), ids=lambda v: v if isinstance(v, str) else "")
def test_parameter_file_keys_are_declared(file: str, node: str, params: dict) -> None:
    assert node in MODULES, f"{file}: section '{node}' is no node of this package"
    unknown = sorted(set(params) - declared(MODULES[node]))
    assert not unknown, f"{file}: {node} does not declare {unknown}"


@pytest.mark.parametrize("module", sorted(set(MODULES.values()) | {"bag_player_node"}))
def test_every_node_checks_its_parameters(module: str) -> None:
    """The check runs in the constructor (dp_bringup.node_runner.check_parameters): run_node does not do it."""
    tree = ast.parse((NODES / f"{module}.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "check_parameters"]
    assert calls, f"{module} never calls check_parameters(self)"
