"""The container health check finds running nodes in the graph and names missing ones."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ros


def test_wait_for_nodes_reports_missing(ros) -> None:
    from dp_bringup.healthcheck import wait_for_nodes

    ros.probe("policy")
    assert wait_for_nodes(["policy", "/policy"], timeout=5.0, context=ros.context) == []
    assert wait_for_nodes(["policy", "action_executor"], timeout=0.5, context=ros.context) == ["action_executor"]
