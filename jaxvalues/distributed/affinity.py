"""Pin a CPU worker to its own cores.

XLA:CPU (jax 0.10) sizes its thread pools by the cores a process may run on and ignores
`intra_op_parallelism_threads`, so two "1-thread" workers on a 2-core node each keep both cores
busy and get in each other's way (bench/RESULTS.md, Distributed section). The fix is the kernel's
CPU affinity: a worker restricted to T cores gets thread pools of T threads.

A worker claims a *slot* on its node: slot k = cores [k·T, (k+1)·T) of the cores the process may
use. Slots are files in a node-local directory held with `flock`, so concurrent workers (also of
different pools or jobs of the same user) never share a slot, and a slot is freed by the kernel
when its process dies (a restarted worker claims one again). When every slot is taken the
worker runs unpinned and says so in `ModelWorker.info()`.

Pinning must happen before JAX creates its thread pools (threads inherit the affinity of the
thread that creates them); `pin_threads` also re-pins every thread the process already has.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def slot_dir() -> Path:
    """Node-local directory of slot lock files (per user)."""
    base = os.environ.get("JAXVALUES_CPU_SLOTS_DIR") or os.path.join(tempfile.gettempdir(),
                                                                     f"jaxvalues-cpu-slots-{os.getuid()}")
    return Path(base)


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def claim_slot(cores_per_worker: int, directory: Path | None = None):
    """-> (cores, handle) for the first free slot, or (None, None) when none is free.

    Keep `handle` (an open file holding the lock) for the life of the process."""
    import fcntl

    if cores_per_worker < 1:
        raise ValueError(f"cores_per_worker must be >= 1, got {cores_per_worker}")
    cores = available_cores()
    slots = len(cores) // cores_per_worker
    d = Path(directory) if directory is not None else slot_dir()
    d.mkdir(parents=True, exist_ok=True)
    for k in range(slots):
        f = open(d / f"slot-{k}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        return cores[k * cores_per_worker:(k + 1) * cores_per_worker], f
    return None, None


def pin_threads(cores) -> int:
    """Restrict every thread of this process (and threads it creates later) to `cores`.
    -> the number of threads pinned."""
    cores = set(int(c) for c in cores)
    n = 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: at least the calling thread
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
            n += 1
        except OSError:  # the thread ended meanwhile
            pass
    return n
