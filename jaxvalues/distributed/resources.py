"""`WorkerResources`: what one worker (a Ray actor holding a model) asks for, from config.

Config (YAML mapping, every key optional; unknown keys are an error naming the key):

    num_cpus: 1                  # Ray CPUs per worker (also the default thread count below)
    num_gpus: 0                  # Ray GPUs per worker
    tpus: 0                      # chips per worker (Ray resource "TPU"; a TPU host has 4 or 8)
    resources: {}                # extra custom Ray resources, e.g. {"TPU-v6e-16-head": 1}
    memory_gb: null              # Ray memory reservation per worker
    threads: null                # intra-op threads per worker; null = num_cpus (CPU workers) or
                                 # unset (accelerator workers keep XLA's defaults)
    xla_flags: ""                # appended to XLA_FLAGS
    env: {}                      # extra environment variables for the worker process
    compilation_cache_dir: null  # JAX persistent compilation cache shared by all workers
    max_restarts: 3              # a killed worker process is restarted (and reloads the model) ...
    max_task_retries: 3          # ... and its unfinished calls are retried, this many times
    mesh: {data: null, model: 1} # device mesh inside a worker (jaxvalues.sharding.make_mesh);
                                 # null (the default) = no mesh, one device
    multihost: false             # true on a multi-host TPU slice: jax.distributed.initialize()
    pin_cpus: null               # pin each CPU worker to its own `threads` cores (affinity.py);
                                 # null = yes for CPU workers, no for GPU/TPU workers

Thread env: with `threads: T`, a worker gets XLA_FLAGS "--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=T" (T = 1) or "intra_op_parallelism_threads=T", plus OMP / MKL /
OpenBLAS / TF thread counts = T, so W workers on a W-core machine do not oversubscribe it: by
default every XLA process grabs a thread per core. The environment is applied by Ray's runtime_env,
i.e. before the worker imports JAX. This XLA version ignores the thread flags, though: what
really bounds a CPU worker is its CPU affinity, so CPU workers also pin themselves to cores of
their own (`pin_cpus`, jaxvalues.distributed.affinity). This module does not import Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from jaxvalues.errors import ConfigError

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS")


@dataclass(frozen=True)
class WorkerResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    tpus: float = 0.0
    resources: dict = field(default_factory=dict)
    memory_gb: float | None = None
    threads: int | None = None
    xla_flags: str = ""
    env: dict = field(default_factory=dict)
    compilation_cache_dir: str | None = None
    max_restarts: int = 3
    max_task_retries: int = 3
    mesh: dict | None = None
    multihost: bool = False
    pin_cpus: bool | None = None

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "resources") -> "WorkerResources":
        cfg = dict(cfg or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
        try:
            out = cls(**cfg)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None
        out.validate(where)
        return out

    def replace(self, **kw) -> "WorkerResources":
        return dataclasses.replace(self, **kw)

    def validate(self, where: str = "resources") -> None:
        for name in ("num_cpus", "num_gpus", "tpus"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{where}.{name} must be a number >= 0, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"{where}.threads must be an integer >= 1 or null, got {self.threads!r}")
        for name in ("max_restarts", "max_task_retries"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < -1:
                raise ConfigError(f"{where}.{name} must be an integer >= -1 (-1 = forever), got {v!r}")
        if not isinstance(self.resources, dict) or not all(isinstance(v, (int, float))
                                                           for v in self.resources.values()):
            raise ConfigError(f"{where}.resources must map resource names to numbers, got {self.resources!r}")
        if "TPU" in self.resources or "GPU" in self.resources or "CPU" in self.resources:
            raise ConfigError(f"{where}.resources: use num_cpus / num_gpus / tpus for CPU, GPU and TPU")
        if not isinstance(self.env, dict):
            raise ConfigError(f"{where}.env must be a mapping of environment variables")
        if self.pin_cpus is not None and not isinstance(self.pin_cpus, bool):
            raise ConfigError(f"{where}.pin_cpus must be true, false or null, got {self.pin_cpus!r}")
        if self.mesh is not None:
            if not isinstance(self.mesh, dict) or set(self.mesh) - {"data", "model"}:
                raise ConfigError(f"{where}.mesh must be {{data: N|null, model: M}}, got {self.mesh!r}")

    # --- derived ---------------------------------------------------------------------------
    @property
    def accelerator(self) -> str:
        return "tpu" if self.tpus else "gpu" if self.num_gpus else "cpu"

    def thread_count(self) -> int | None:
        if self.threads is not None:
            return self.threads
        if self.accelerator == "cpu":
            return max(1, int(self.num_cpus))
        return None

    def pinned_cores(self) -> int | None:
        """Cores each worker pins itself to (None = no pinning): its thread count, CPU workers only
        unless pin_cpus is set."""
        pin = self.accelerator == "cpu" if self.pin_cpus is None else self.pin_cpus
        return (self.thread_count() or max(1, int(self.num_cpus))) if pin else None

    def env_vars(self) -> dict[str, str]:
        """Environment for the worker process (applied before it imports JAX)."""
        env: dict[str, str] = {}
        flags = []
        t = self.thread_count()
        if t is not None:
            if t == 1:
                flags.append("--xla_cpu_multi_thread_eigen=false")
            flags.append(f"intra_op_parallelism_threads={t}")
            env.update({k: str(t) for k in THREAD_ENV})
        if self.xla_flags:
            flags.append(self.xla_flags.strip())
        if flags:
            env["XLA_FLAGS"] = " ".join(flags)
        if self.compilation_cache_dir:
            env.update({"JAX_COMPILATION_CACHE_DIR": str(self.compilation_cache_dir),
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
        if self.accelerator == "cpu":
            env.setdefault("JAX_PLATFORMS", "cpu")
        env.update({str(k): str(v) for k, v in self.env.items()})
        return env

    def ray_resources(self) -> dict[str, float]:
        out = {str(k): float(v) for k, v in self.resources.items()}
        if self.tpus:
            out["TPU"] = float(self.tpus)
        return out

    def actor_options(self) -> dict:
        """Keyword arguments for `ActorClass.options(...)`."""
        opts: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                      "max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries,
                      "runtime_env": {"env_vars": self.env_vars()}}
        res = self.ray_resources()
        if res:
            opts["resources"] = res
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 2**30)
        return opts

    def to_config(self) -> dict:
        return dataclasses.asdict(self)
