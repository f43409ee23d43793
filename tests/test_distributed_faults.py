"""Faults on a two-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and a worker
node with one CPU each, so one pool worker lands on each): a node whose raylet is killed mid-
collection or mid-sweep (its worker cannot be placed again; the pool gives it up after
restart_timeout_s and resubmits its calls), and a driver killed mid-sweep (the rerun computes only
the unfinished conditions). Every result must equal an undisturbed run's exactly. Also: Ray's
start-up messages do not reach the user's terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("torch")
ray = pytest.importorskip("ray")

import jaxvalues as jv  # noqa: E402
from jaxvalues.distributed._testing import tiny_examples, tiny_spec, tiny_workspace  # noqa: E402
from jaxvalues.distributed.collect import collect_sharded  # noqa: E402
from jaxvalues.distributed.pool import RayPool  # noqa: E402
from jaxvalues.distributed.resources import WorkerResources  # noqa: E402
from jaxvalues.distributed.spec import SweepSpec  # noqa: E402
from jaxvalues.distributed.sweep import run_sweep  # noqa: E402
from jaxvalues.stats.collect import collect  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]
KW = dict(batch_size=8, buckets=[32])
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head_node": 1},
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, resources={"side_node": 1})
    ray.init(address=c.address, log_to_driver=False, namespace="jaxvalues-faults")
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _side_node(c):
    """The worker node (added again after a test removed it)."""
    nodes = list(c.worker_nodes)
    if not nodes:
        nodes = [c.add_node(num_cpus=1, resources={"side_node": 1})]
        c.wait_for_nodes()
    return nodes[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("faults_ws"))


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    return WorkerResources(num_cpus=1, threads=1, compilation_cache_dir=str(tmp_path_factory.mktemp("jax_cache")))


def _pool(ws, resources):
    p = RayPool(ws["model"], 2, resources, restart_timeout_s=3, poll_s=0.5)
    p.pids()
    return p


def _spec_raw(ws):
    return tiny_spec(ws, values=["integrity"], methods=["vape", "random"], sizes=[0.05, 0.1], modes=["zero"],
                     seeds=[0, 1])


@pytest.fixture(scope="module")
def reference_table(ws, tmp_path_factory):
    """The undisturbed sweep (in this process, no Ray)."""
    return run_sweep(SweepSpec.from_dict(_spec_raw(ws)), tmp_path_factory.mktemp("ref") / "out").table()


def _on_side_node(pool, c, node):
    """Index of the pool worker that runs on `node`."""
    node_id = node.node_id
    ids = [ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())) for a in pool.actors]
    assert node_id in ids and len(set(ids)) == 2, "one worker per node"
    return ids.index(node_id)


def test_node_lost_mid_collection_gives_identical_statistics(cluster, ws, resources):
    lm = jv.load_model(ws["model"])
    ex = tiny_examples(40, vocab=lm.config.vocab_size, seed=2)
    ref = collect(lm, ex, "abc", **KW)
    node = _side_node(cluster)
    pool = _pool(ws, resources)
    try:
        victim = _on_side_node(pool, cluster, node)
        removed = []

        arrived = []

        def remove_node(index, stats):
            arrived.append(index)
            if not removed:  # mid-run: both workers hold queued shards
                cluster.remove_node(node, allow_graceful=False)
                removed.append(index)

        t0 = time.perf_counter()
        got = collect_sharded(pool, ex, "abc", shard_size=4, on_shard=remove_node, **KW)
        assert removed and len(arrived) == 10 and got.equals(ref)
        assert pool.dead <= {victim} and got.meta["collect"]["shards"] == 10
        print(f"collection with a lost node: {time.perf_counter() - t0:.1f} s, dead workers {pool.dead}")
    finally:
        pool.close()


def test_node_lost_mid_sweep_gives_identical_table(cluster, ws, resources, reference_table, tmp_path):
    node = _side_node(cluster)
    pool = _pool(ws, resources)
    try:
        victim = _on_side_node(pool, cluster, node)
        removed = []

        def remove_node(cond, rows):
            if not removed:
                cluster.remove_node(node, allow_graceful=False)
                removed.append(cond.id)

        spec = SweepSpec.from_dict(_spec_raw(ws))
        res = run_sweep(spec, tmp_path / "out", pool_factory=lambda model: pool, on_condition=remove_node)
        assert removed and sorted(res.computed) == sorted(c.id for c in spec.conditions()) and not res.failed
        assert pool.dead <= {victim}
        print(f"sweep with a lost node: dead workers {pool.dead}, computed {len(res.computed)}")
        pd.testing.assert_frame_equal(res.table(), reference_table, check_exact=True)
    finally:
        pool.close()


def test_driver_killed_mid_sweep_rerun_computes_only_unfinished(ws, reference_table, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_raw(ws)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "jaxvalues.cli", "sweep", "--spec", str(spec_file), "--out", str(out), "--json",
           "--flush-seconds", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("parts/*.parquet")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no part file appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    spec = SweepSpec.from_dict(_spec_raw(ws))
    ids = [c.id for c in spec.conditions()]
    finished = {p.name.split(".")[0] for p in (out / "parts").glob("*.parquet")}
    assert finished and len(finished) < len(ids), f"the kill came too late ({len(finished)} of {len(ids)})"
    again = run_sweep(spec, out)
    assert sorted(again.skipped) == sorted(finished)
    assert sorted(again.computed) == sorted(set(ids) - finished) and not again.failed
    pd.testing.assert_frame_equal(again.table(), reference_table, check_exact=True)


def test_ray_start_up_messages_do_not_reach_the_terminal(tmp_path):
    code = ("from jaxvalues.distributed.cluster import connect, disconnect\n"
            "connect('local', num_cpus=1)\ndisconnect()\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    noisy = [ln for ln in (r.stderr + r.stdout).splitlines()
             if "Token authentication" in ln or "Started a local Ray instance" in ln or " INFO " in ln]
    assert noisy == [], noisy
