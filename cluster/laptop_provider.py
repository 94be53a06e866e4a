"""Ray's fake multi-node provider, with one folder per node for unpacked job code.

Ray's `fake_multinode` provider starts every "worker node" as local processes that
share the head's session folder. Each node unpacks a job's `--working-dir` into
`<session>/runtime_resources/` and replaces what is there, so on one machine a node
joining mid-study deletes the folder the driver and the running trials work in
(on a real cluster each node has its own disk). This provider gives each fake node
its own `runtime_resources_<n>/`; everything else is Ray's provider unchanged.

Used by cluster/laptop.yaml (`provider: {type: external, module: laptop_provider.LaptopProvider}`);
the folder holding this file must be on PYTHONPATH of `ray start --head`.
"""
from __future__ import annotations

import functools

import ray._private.parameter as parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class LaptopProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        with self.lock:                        # the parent numbers nodes under this (re-entrant) lock
            ray_params = parameter.RayParams
            parameter.RayParams = functools.partial(
                ray_params, runtime_env_dir_name=f"runtime_resources_{self._next_node_id + 1}")
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                parameter.RayParams = ray_params
