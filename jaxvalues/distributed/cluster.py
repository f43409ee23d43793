"""Starting or joining a Ray cluster: `--ray local` and `--ray ADDRESS`.

    connect("local", num_cpus=2)       # a private local cluster (dashboard off, worker logs not
                                       # forwarded); stopped by `disconnect()` / at exit
    connect("auto")                    # the cluster this machine belongs to (RAY_ADDRESS or a
                                       # running `ray start --head`)
    connect("ray://head:10001")        # a remote cluster through Ray Client
    connect("10.0.0.2:6379")           # a cluster's GCS address

When Ray is already initialised in this process (e.g. inside `ray job submit`, or a test
fixture) the existing connection is reused. Any failure is a `JaxValuesError` that says what was
tried and how to fix it.
"""

from __future__ import annotations

import contextlib
import logging
import os

from jaxvalues.errors import JaxValuesError


class RayStartError(JaxValuesError):
    """Ray is missing, or the cluster could not be started or reached."""


def import_ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is a dependency
        raise RayStartError(f"Ray is not installed ({e}); `pip install 'ray[default]'` or run without --ray") from None
    return ray


def connect(address: str, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_memory_gb: float | None = None, namespace: str = "jaxvalues",
            runtime_env: dict | None = None) -> dict:
    """Start ("local") or join (any other address) a Ray cluster; returns `ray.cluster_resources()`."""
    ray = import_ray()
    if not address:
        raise RayStartError("--ray needs 'local' (start a cluster on this machine) or a cluster ADDRESS")
    if ray.is_initialized():
        return ray.cluster_resources()
    kw: dict = dict(include_dashboard=False, log_to_driver=False, namespace=namespace, configure_logging=False)
    if runtime_env:
        kw["runtime_env"] = runtime_env
    if address == "local":
        # a fresh cluster even when RAY_ADDRESS points elsewhere
        kw.update(address="local", num_cpus=num_cpus if num_cpus is not None else os.cpu_count(), num_gpus=num_gpus)
        if object_store_memory_gb:
            kw["object_store_memory"] = int(object_store_memory_gb * 2**30)
        what = f"start a local Ray cluster (num_cpus={kw['num_cpus']})"
        hint = "check free memory and /tmp space, or stop a stale cluster with `ray stop`"
    else:
        if num_cpus is not None or num_gpus is not None:
            raise RayStartError("num_cpus / num_gpus apply to --ray local only; a joined cluster has its own")
        kw["address"] = address
        what = f"join the Ray cluster at {address!r}"
        hint = ("is the head running (`ray status --address ...`)? use ray://HOST:10001 for Ray Client, "
                "HOST:6379 on a cluster node, or 'auto'")
        problem = _unreachable(address)
        if problem:  # ray.init would retry for minutes
            raise RayStartError(f"could not {what}: {problem}; {hint}")
    try:
        with _quiet_ray_logging():
            ray.init(**kw)
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError, ...
        raise RayStartError(f"could not {what}: {type(e).__name__}: {str(e).strip()[:500]}; {hint}") from None
    return ray.cluster_resources()


@contextlib.contextmanager
def _quiet_ray_logging():
    """Ray's start-up messages (e.g. "Token authentication is enabled for this Ray cluster ...", a
    WARNING of ray._private.authentication) reach stderr through Python's last-resort handler when
    nobody configured logging (configure_logging=False): the "ray" loggers are held at ERROR while
    ray.init runs; errors still raise and are reported by connect."""
    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why HOST:PORT (or ray://HOST:PORT) cannot be reached by TCP, or None ("auto": not checked)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    if hostport == "auto" or ":" not in hostport:
        return None
    host, _, port = hostport.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        return f"{port!r} is not a port number"
    try:
        with socket.create_connection((host.strip("[]"), port_n), timeout=timeout_s):
            return None
    except OSError as e:
        return f"nothing answers at {host}:{port_n} ({e.strerror or e})"


def disconnect() -> None:
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()


def describe() -> str:
    """One line: nodes and resources of the connected cluster."""
    ray = import_ray()
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    parts = [f"{k}={v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU", "TPU") or k.startswith("TPU-")]
    return f"{len(nodes)} node(s), " + ", ".join(parts)
