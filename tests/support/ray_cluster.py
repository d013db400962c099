"""A real multi-node Ray cluster on this machine for the engine tests, kept small and on loopback.

Two nodes of one CPU each (the machine has two cores), object stores of 80 MiB (Ray's minimum is 75),
no dashboard. Every address is 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray take the
loopback address as this node's, so no traffic leaves the machine's loopback interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from support.processes import children, command_line

NODES = 2
OBJECT_STORE = 80 * 2**20
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass
class RayCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str

    def raylets(self) -> list[int]:
        """PID of each node's raylet, the parent of that node's workers."""
        return [node.all_processes["raylet"][0].process.pid for node in self.cluster.list_all_nodes()]

    def episode_workers(self) -> dict[int, tuple[int, int]]:
        """Workers running an episode now: {pid: (node number, episode index)} from their process titles."""
        out = {}
        for node, raylet in enumerate(self.raylets()):
            for pid in children(raylet):
                title = command_line(pid)
                if title.startswith("ray::esper-episode-"):
                    out[pid] = (node, int(title.split()[0].rsplit("-", 1)[1]))
        return out


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """Start the cluster and connect this process to it as a driver; shut both down after. Call with
    LOOPBACK in the environment before Ray is first imported."""
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(NODES - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        yield RayCluster(cluster, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
