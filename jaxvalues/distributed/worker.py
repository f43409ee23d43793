"""`ModelWorker`: a long-lived worker that loads one model once and serves shards and conditions.

The class is plain Python: the Ray path wraps it with `ray.remote` (one actor per worker, see
pool.py) and the no-Ray path calls the very same methods in-process, so both run identical code
and give identical results. The model is loaded in `__init__` from its source (path, packaged
name or hub id), so a worker that Ray restarts after its process died loads it again.

Methods return plain picklable values (NeuronStats, pandas DataFrames, dicts).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Sequence


class ModelWorker:
    def __init__(self, source: str, dtype: str = "float32", mesh: dict | None = None, multihost: bool = False,
                 pin_cores: int | None = None):
        t0 = time.perf_counter()
        self.cpu_cores, self._slot = None, None
        if pin_cores:  # before JAX exists, so its thread pools are sized to the claimed cores
            from jaxvalues.distributed.affinity import claim_slot, pin_threads

            self.cpu_cores, self._slot = claim_slot(int(pin_cores))
            if self.cpu_cores is not None:
                pin_threads(self.cpu_cores)
        if multihost:
            from jaxvalues.distributed.tpu import initialize_jax_distributed

            initialize_jax_distributed()
        import jaxvalues as jv

        self.source, self.dtype = str(source), dtype
        self.lm = jv.load_model(self.source, dtype=dtype)
        self.mesh = None
        if mesh is not None:
            from jaxvalues.sharding import make_mesh, shard_model

            self.mesh = make_mesh(mesh.get("data"), int(mesh.get("model") or 1))
            if multihost:  # host arrays: each process places its own shards of the global arrays
                import numpy as np
                from flax import nnx

                flat = nnx.to_flat_state(self.lm.state)
                for _, var in flat:
                    var.set_value(np.asarray(var.get_value()))
                self.lm.state = nnx.from_flat_state(flat)
            shard_model(self.lm, self.mesh)
        if self.cpu_cores is not None:  # threads started meanwhile by threads other than this one
            from jaxvalues.distributed.affinity import pin_threads

            pin_threads(self.cpu_cores)
        self.cache: dict = {}  # per context: prompts, baselines, selections (see evaluate.py)
        self.load_seconds = round(time.perf_counter() - t0, 3)
        self.calls = 0

    # ------------------------------------------------------------------------------ identity
    def info(self) -> dict:
        import jax

        restarted = False
        try:
            import ray

            if ray.is_initialized():
                restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        except Exception:  # noqa: BLE001 - not inside Ray
            pass
        return {"pid": os.getpid(), "host": socket.gethostname(), "source": self.source,
                "devices": [str(d) for d in jax.local_devices()], "process_index": jax.process_index(),
                "load_seconds": self.load_seconds, "restarted": restarted, "calls": self.calls,
                "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_cores": self.cpu_cores,
                "affinity": sorted(os.sched_getaffinity(0))}

    def pid(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------------------ collection
    def collect_shard(self, index: int, items: Sequence, conditions: Sequence[str] | None, options: dict):
        """Statistics of one shard -> (index, NeuronStats).

        items: `TokenizedExample`s (conditions = their names), or activation records when
        options["records"] is true (tokenized here with the model's tokenizer; conditions from
        options["scheme"])."""
        from jaxvalues.stats.collect import collect
        from jaxvalues.stats.records import collect_records

        self.calls += 1
        opts = dict(options)
        records, scheme, chat = opts.pop("records", False), opts.pop("scheme", "values"), opts.pop("chat", None)
        if self.mesh is not None:
            opts["mesh"] = self.mesh
        if records:
            stats = collect_records(self.lm, items, scheme=scheme, chat=chat, **opts)
        else:
            stats = collect(self.lm, list(items), conditions, **opts)
        stats.meta.setdefault("shard", index)
        return index, stats

    # ------------------------------------------------------------------------------ sweeps
    def run_condition(self, condition: dict, context) -> "object":
        """One sweep condition -> its result rows (pandas DataFrame); see evaluate.py."""
        from jaxvalues.distributed.evaluate import run_condition

        self.calls += 1
        return run_condition(self.lm, context, condition, self.cache)
