"""Health check for containers: are the expected nodes in the ROS 2 graph?

    dp-healthcheck                       # nodes from $DP_HEALTH_NODES (comma separated)
    dp-healthcheck policy action_executor --timeout 10

Exit status 0 when every expected node is discovered within the timeout, 1 otherwise (missing ones
are named). It joins the graph with the caller's ROS_DOMAIN_ID and discovery settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import rclpy
from rclpy.context import Context


def wait_for_nodes(expected: list[str], timeout: float, context: Context | None = None) -> list[str]:
    """Expected node names (plain or fully qualified) still missing from the graph after ``timeout`` s."""
    node = rclpy.create_node(f"dp_healthcheck_{os.getpid()}", context=context, start_parameter_services=False,
                             enable_rosout=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            present = {name for name, _ in node.get_node_names_and_namespaces()}
            present |= {f"{ns.rstrip('/')}/{name}" for name, ns in node.get_node_names_and_namespaces()}
            missing = [n for n in expected if n not in present]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.2)
    finally:
        node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("nodes", nargs="*", help="node names (default: $DP_HEALTH_NODES)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for discovery")
    args = parser.parse_args(argv)
    expected = args.nodes or [n.strip() for n in os.environ.get("DP_HEALTH_NODES", "").split(",") if n.strip()]
    if not expected:
        parser.error("no node names given and DP_HEALTH_NODES is empty")
    rclpy.init(args=[])
    try:
        missing = wait_for_nodes(expected, args.timeout)
    finally:
        rclpy.try_shutdown()
    if missing:
        print(f"unhealthy: node(s) not in the ROS graph after {args.timeout:g} s: {', '.join(missing)}")
        return 1
    print(f"healthy: {', '.join(expected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
