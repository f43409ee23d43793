"""Worker pools: N long-lived Ray actors holding one model (`RayPool`), or one in-process worker
(`LocalPool`, no Ray). Both run `ModelWorker` methods over a list of calls with the same interface:

    pool.map("collect_shard", calls, on_result, on_error=None)
        calls: [(key, args_tuple)]; on_result(key, value) in completion order;
        on_error(key, WorkerFailure) for a call that failed for good (default: raise it)

`pool.put(obj)` ships an object once (ray.put; LocalPool: the object itself) for many calls.

Scheduling (RayPool): each actor has at most `max_in_flight` calls queued (2: the next call is
already waiting when one finishes), new calls go to the actor that finished, so fast workers take
more calls; which worker ran a call never changes its result.

Faults: actors are created with `max_restarts` / `max_task_retries` (from WorkerResources). A
worker process that dies (killed, OOM) is restarted by Ray, reloads the model in `__init__`, and
its unfinished calls are retried there. When an actor is gone for good, its calls are resubmitted
to the remaining actors (`resubmits` times each). An exception raised by the call itself is
deterministic and is not retried: it becomes a `WorkerFailure` carrying the remote traceback.
"""

from __future__ import annotations

import copy
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

from jaxvalues.distributed.resources import WorkerResources
from jaxvalues.errors import JaxValuesError


class WorkerFailure(JaxValuesError):
    """A call (shard, sweep condition) failed for good; `.key` names it, `.remote_traceback` says where."""

    def __init__(self, key, message: str, remote_traceback: str = "", user_error: bool = False):
        # user_error: the call raised a ConfigError (a setting the user can fix): the message is one
        # line; the traceback is kept in .remote_traceback (failures.json) but not shown
        self.key, self.remote_traceback, self.user_error = key, remote_traceback, bool(user_error)
        text = f"{_name(key)} failed: {message}"
        if remote_traceback and not user_error:
            text += "\n--- remote traceback ---\n" + remote_traceback.rstrip()
        super().__init__(text)


def _is_user_error(e) -> bool:
    from jaxvalues.errors import ConfigError

    return isinstance(e, ConfigError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _name(key) -> str:
    return key if isinstance(key, str) else f"call {key!r}"


def _raise(key, failure):
    raise failure


class LocalPool:
    """One `ModelWorker` in this process (no Ray): the reference every Ray run must equal."""

    size = 1

    def __init__(self, source: str, dtype: str = "float32", mesh: dict | None = None):
        self.source, self.dtype, self.mesh = source, dtype, mesh
        self._worker = None

    @property
    def worker(self):
        if self._worker is None:
            from jaxvalues.distributed.worker import ModelWorker

            self._worker = ModelWorker(self.source, self.dtype, self.mesh)
        return self._worker

    def map(self, method: str, calls: Iterable, on_result: Callable, on_error: Callable = _raise, **_) -> None:
        for key, args in calls:
            try:
                value = getattr(self.worker, method)(*args)
            except Exception as e:  # noqa: BLE001 - reported with its traceback, like the Ray path
                user = _is_user_error(e)
                on_error(key, WorkerFailure(key, f"{type(e).__name__}: {_one_line(e) if user else e}",
                                            traceback.format_exc(), user_error=user))
                continue
            on_result(key, value)

    def put(self, obj):
        return obj

    def close(self) -> None:
        self._worker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RayPool:
    """`size` Ray actors, each a `ModelWorker(source)` with `resources` (needs a connected Ray)."""

    restart_timeout_s, poll_s = 300.0, 2.0  # class defaults (subclasses that skip __init__: SlicePool)

    def __init__(self, source: str, size: int, resources: WorkerResources | None = None, dtype: str = "float32",
                 max_in_flight: int = 2, resubmits: int = 2, start_timeout_s: float = 900.0,
                 restart_timeout_s: float = 300.0, poll_s: float = 2.0):
        from jaxvalues.distributed.cluster import import_ray

        ray = import_ray()
        if not ray.is_initialized():
            raise JaxValuesError("RayPool needs a Ray connection: call jaxvalues.distributed.connect(...) first")
        if size < 1:
            raise JaxValuesError(f"a worker pool needs at least one worker, got {size}")
        if Path(source).expanduser().exists():  # workers may start in another directory
            source = str(Path(source).expanduser().resolve())
        self.source, self.size, self.dtype = str(source), int(size), dtype
        self.resources = resources or WorkerResources()
        self.max_in_flight, self.resubmits = max(1, int(max_in_flight)), int(resubmits)
        cls = ray.remote(_actor_class())
        opts = self.resources.actor_options()
        self.actors = [cls.options(**opts).remote(self.source, dtype, self.resources.mesh, self.resources.multihost,
                                                        self.resources.pinned_cores())
                       for _ in range(self.size)]
        self.dead: set[int] = set()
        self.start_timeout_s, self._ready = start_timeout_s, False
        # a worker that is not ALIVE for this long while it holds calls (its node is gone and Ray
        # cannot place it again, e.g. no free resources) is given up: its calls go to the others
        self.restart_timeout_s, self.poll_s = float(restart_timeout_s), float(poll_s)

    # -------------------------------------------------------------------------------- helpers
    def _probe(self) -> list:
        return [a.pid.remote() for a in self.actors]

    def ready(self) -> None:
        """Wait until every worker has loaded its model; a clear error when one cannot start (its
        __init__ failed) or none is scheduled within start_timeout_s (not enough free resources)."""
        import ray
        from ray.exceptions import RayActorError

        if self._ready:
            return
        refs = self._probe()
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout_s)
        if pending:
            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU", "TPU")}
            raise JaxValuesError(
                f"{len(pending)} of {len(refs)} workers for {self.source} did not start within "
                f"{self.start_timeout_s:g} s; each asks for {self.resources.ray_resources() or {}} with "
                f"num_cpus={self.resources.num_cpus:g}, num_gpus={self.resources.num_gpus:g}, and the cluster has "
                f"{free} free. Use fewer workers (--workers) or smaller resources, or add nodes")
        try:
            ray.get(done)
        except RayActorError as e:
            raise WorkerFailure(f"a worker for {self.source}", "could not start (loading the model failed?)",
                                _remote_traceback(e)) from None
        self._ready = True

    def pids(self) -> list[int]:
        """Process id of every worker (waits until each has loaded its model)."""
        import ray

        self.ready()
        return ray.get([a.pid.remote() for a in self.actors])

    def info(self) -> list[dict]:
        import ray

        return ray.get([a.info.remote() for a in self.actors])

    def subset(self, workers: int) -> "RayPool":
        """A view on the first `workers` actors (same processes; closing the view closes nothing)."""
        view = copy.copy(self)
        view.actors, view.size = self.actors[:workers], min(workers, self.size)
        view.close = lambda: None
        return view

    def put(self, obj):
        """An object shipped once and passed by reference to many calls (ray.put)."""
        import ray

        return ray.put(obj)

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------------------------- map
    def map(self, method: str, calls: Iterable, on_result: Callable, on_error: Callable = _raise,
            workers: int | None = None) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError

        self.ready()
        use = [i for i in range(min(workers or self.size, self.size)) if i not in self.dead]
        if not use:
            raise WorkerFailure(f"the workers of {self.source}", "all died earlier in this session")
        todo = deque((key, args, 0) for key, args in calls)
        inflight: dict = {}  # ref -> (actor index, key, args, attempts, all refs of the call)
        load = {i: 0 for i in use}
        last_death = ""

        down_since: dict[int, float] = {}  # worker -> when it was first seen unavailable

        def submit():
            while todo:
                free = [i for i in use if i not in self.dead and load[i] < self.max_in_flight]
                healthy = [i for i in use if i not in self.dead and i not in down_since]
                if healthy:  # an unavailable (restarting, node lost) worker gets no new calls
                    free = [i for i in free if i not in down_since]
                if not free:
                    return
                i = min(free, key=lambda j: (load[j], j))
                key, args, attempts = todo.popleft()
                ref, refs = self._submit(i, method, args)
                inflight[ref] = (i, key, args, attempts, refs)
                load[i] += 1

        def give_up_stalled():
            """Workers not ALIVE for restart_timeout_s: killed for good, their calls resubmitted."""
            nonlocal last_death
            now = time.monotonic()
            for j in [j for j in use if j not in self.dead and (load[j] > 0 or j in down_since)]:
                if self._state(j) in ("ALIVE", None):
                    down_since.pop(j, None)
                    continue
                if now - down_since.setdefault(j, now) < self.restart_timeout_s:
                    continue
                self.dead.add(j)
                last_death = (f"worker {j} was not alive for {self.restart_timeout_s:g} s (its node was lost and "
                              f"it could not be placed again)")
                try:
                    ray.kill(self.actors[j], no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                for r in [r for r, v in inflight.items() if v[0] == j]:
                    _, key, args, attempts, _refs = inflight.pop(r)
                    if attempts >= self.resubmits:
                        on_error(key, WorkerFailure(key, f"its worker failed {attempts + 1} times (node lost)",
                                                    last_death))
                    else:
                        todo.appendleft((key, args, attempts + 1))
                load[j] = 0

        checked = [time.monotonic()]

        def refresh_down():
            """Workers seen unavailable that are ALIVE again (restarted) take calls again."""
            if down_since and time.monotonic() - checked[0] >= self.poll_s:
                checked[0] = time.monotonic()
                for j in list(down_since):
                    if self._state(j) in ("ALIVE", None):
                        down_since.pop(j, None)

        submit()
        while inflight:
            refresh_down()
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
            if not ready:
                give_up_stalled()
                if todo and all(j in self.dead for j in use):
                    raise WorkerFailure(f"all {len(use)} worker(s) of {self.source}", "died", last_death)
                submit()
                continue
            ref = ready[0]
            i, key, args, attempts, refs = inflight.pop(ref)
            load[i] -= 1
            try:
                value = ray.get(refs)[0]
            except RayTaskError as e:  # the call itself raised: deterministic, report it
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
                user = _is_user_error(cause)
                msg = (f"{type(cause).__name__}: {_one_line(cause) if user else cause}" if cause is not None
                       else str(e).splitlines()[0])
                on_error(key, WorkerFailure(key, msg, _remote_traceback(e), user_error=user))
            except (ActorUnavailableError, RayActorError, RayError) as e:  # the worker, not the call, failed
                if isinstance(e, ActorUnavailableError):
                    down_since.setdefault(i, time.monotonic())  # restarting: no new calls until ALIVE
                    time.sleep(1.0)
                elif isinstance(e, RayActorError):
                    self.dead.add(i)  # gone for good: restarts used up, or its __init__ failed
                last_death = _remote_traceback(e)
                if attempts >= self.resubmits:
                    on_error(key, WorkerFailure(key, f"its worker failed {attempts + 1} times ({type(e).__name__})",
                                                last_death))
                else:
                    todo.appendleft((key, args, attempts + 1))
            else:
                on_result(key, value)
            if todo and all(j in self.dead for j in use):
                raise WorkerFailure(f"all {len(use)} worker(s) of {self.source}",
                                    "died (could the model not be loaded?)", last_death)
            submit()

    def _state(self, i: int) -> str | None:
        """Ray's state of worker i's actor (ALIVE, RESTARTING, DEAD, ...); None when unknown."""
        try:
            from ray._private.state import actors

            return actors(actor_id=self.actors[i]._actor_id.hex()).get("State")
        except Exception:  # noqa: BLE001 - a monitoring failure must not kill a worker
            return None

    def _submit(self, i: int, method: str, args: tuple):
        """Start a call on worker i -> (the ref whose value is the result, all refs of the call)."""
        ref = getattr(self.actors[i], method).remote(*args)
        return ref, [ref]


def _remote_traceback(e) -> str:
    """The traceback text Ray carries in a RayTaskError (the remote frames)."""
    import re

    tb = re.sub(r"\x1b\[[0-9;]*m", "", str(getattr(e, "traceback_str", None) or e))  # no terminal colours
    if "Traceback" not in tb:
        tb = "Traceback (most recent call last, in the Ray worker):\n" + tb
    return tb


def _actor_class():
    from jaxvalues.distributed.worker import ModelWorker

    return ModelWorker
