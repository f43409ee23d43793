"""Multi-host TPU slices: one worker = one slice = one actor per host, running the same program.

A TPU pod slice (e.g. v5e 4x4 = 16 chips on 4 hosts, or v6e-32 on 8 hosts) is one JAX program
across all its hosts: every host runs the same Python code (SPMD), `jax.distributed` connects
them, and `jax.devices()` lists the chips of every host. `SlicePool` reserves whole slices with
`ray.util.tpu.slice_placement_group` (one bundle per host, all the host's chips) and starts one
`ModelWorker(multihost=True)` actor per bundle. Each actor calls `jax.distributed.initialize()`
(the coordinator, process count and id are detected from the TPU VM metadata) before loading
the model onto a mesh over all the slice's chips (`resources.mesh`, default: data parallel over
all devices). A call (a shard, a condition) is sent to every host of a slice; all hosts compute
the same replicated result and host 0's is used. Several slices are several independent workers:
shards and conditions are spread over them like over single-host workers, and the exact merge
makes the result independent of how many there are.

Faults: a slice is one program, so a host that dies breaks its slice; its calls go to the other
slices (RayPool's resubmission). Restarting a single host's actor cannot rejoin a running
`jax.distributed` group, so slice actors always run with max_restarts = max_task_retries = 0. Nothing here runs without
TPUs; tests only check the configuration.
"""

from __future__ import annotations

import os

from jaxvalues.distributed.pool import RayPool
from jaxvalues.distributed.resources import WorkerResources
from jaxvalues.errors import JaxValuesError


def initialize_jax_distributed(timeout_s: int = 300) -> None:
    """Join the slice's jax.distributed group (idempotent); call before anything touches devices.

    JAXVALUES_COORDINATOR / JAXVALUES_NUM_PROCESSES / JAXVALUES_PROCESS_ID override the metadata
    detection (e.g. on GKE without the TPU metadata server)."""
    import jax

    if jax.distributed.is_initialized():
        return
    kw: dict = {"initialization_timeout": timeout_s}
    if os.environ.get("JAXVALUES_COORDINATOR"):
        kw.update(coordinator_address=os.environ["JAXVALUES_COORDINATOR"],
                  num_processes=int(os.environ["JAXVALUES_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAXVALUES_PROCESS_ID"]))
    jax.distributed.initialize(**kw)


class SlicePool(RayPool):
    """`num_slices` workers, each a whole TPU slice of `topology` (see the module docstring)."""

    def __init__(self, source: str, topology: str, accelerator_version: str, num_slices: int = 1,
                 resources: WorkerResources | None = None, dtype: str = "bfloat16", max_in_flight: int = 2,
                 resubmits: int = 2, chips_per_vm: int | None = None):
        from jaxvalues.distributed.cluster import import_ray

        ray = import_ray()
        if not ray.is_initialized():
            raise JaxValuesError("SlicePool needs a Ray connection: call jaxvalues.distributed.connect(...) first")
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        from ray.util.tpu import slice_placement_group

        from jaxvalues.distributed.worker import ModelWorker

        # a restarted host cannot rejoin its slice's jax.distributed group: no restarts or retries
        res = (resources or WorkerResources()).replace(multihost=True, max_restarts=0, max_task_retries=0)
        try:
            self.slice = slice_placement_group(topology, accelerator_version, num_slices=num_slices,
                                               resources_per_bundle={"CPU": float(res.num_cpus)},
                                               chips_per_vm=chips_per_vm, pg_per_slice=True)
        except Exception as e:  # noqa: BLE001 - ValueError for bad topologies, timeouts
            raise JaxValuesError(f"could not reserve {num_slices} TPU {accelerator_version} {topology} slice(s): "
                                 f"{type(e).__name__}: {e}") from None
        hosts = self.slice.num_hosts // num_slices
        chips = self.slice.bundle_resources["TPU"]  # every chip of a host (logical TPU resources)
        self.source, self.size, self.dtype = str(source), int(num_slices), dtype
        self.resources, self.max_in_flight, self.resubmits = res, max(1, int(max_in_flight)), int(resubmits)
        self.dead: set[int] = set()
        self.start_timeout_s, self._ready = 1800.0, False
        cls = ray.remote(ModelWorker)
        opts = res.replace(tpus=chips).actor_options()
        self.actors = []  # one list of host actors per slice; host 0 first
        for s, pg in enumerate(self.slice.slice_placement_groups):
            ray.get(pg.ready())
            group = [cls.options(**opts, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=h)).remote(
                    self.source, dtype, res.mesh or {"data": None, "model": 1}, True) for h in range(hosts)]
            self.actors.append(group)

    def _submit(self, i: int, method: str, args: tuple):
        refs = [getattr(a, method).remote(*args) for a in self.actors[i]]
        return refs[0], refs

    def _probe(self) -> list:
        return [a.pid.remote() for g in self.actors for a in g]

    def pids(self) -> list[int]:
        import ray

        self.ready()
        return ray.get([g[0].pid.remote() for g in self.actors])

    def info(self) -> list[dict]:
        import ray

        return ray.get([g[0].info.remote() for g in self.actors])

    def close(self) -> None:
        import ray

        for group in self.actors:
            for a in group:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
        self.actors = []
        try:
            self.slice.shutdown()
        except Exception:  # noqa: BLE001
            pass
