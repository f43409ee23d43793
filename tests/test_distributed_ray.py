"""jaxvalues.distributed on a real local Ray cluster (started once per session, 2 CPUs): no Ray vs
Ray with 1 and 2 workers give bit-identical statistics and identical sweep tables; a worker killed
by pid mid-run is restarted and the result is unchanged; failures carry the remote traceback; the
`collect --ray` CLI path writes the same statistics as the in-process command.

The two workers are long-lived actors shared by the tests (each loads the model once); every
worker runs single-threaded XLA (WorkerResources.threads = 1) so two of them fit on two cores, and
they share a JAX compilation cache so each program is compiled once.
"""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest
import yaml

pytest.importorskip("torch")
ray = pytest.importorskip("ray")

import jaxvalues as jv  # noqa: E402
from jaxvalues.distributed._testing import tiny_examples, tiny_spec, tiny_workspace  # noqa: E402
from jaxvalues.distributed.cluster import connect  # noqa: E402
from jaxvalues.distributed.collect import collect_sharded  # noqa: E402
from jaxvalues.distributed.pool import RayPool  # noqa: E402
from jaxvalues.distributed.resources import WorkerResources  # noqa: E402
from jaxvalues.distributed.spec import SweepSpec  # noqa: E402
from jaxvalues.distributed.sweep import SweepFailed, run_sweep  # noqa: E402
from jaxvalues.stats.collect import collect  # noqa: E402

# Ray starts its processes with fork+exec (safe), which JAX's fork warning cannot tell apart
pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]
KW = dict(batch_size=8, buckets=[32])


@pytest.fixture(scope="session")
def ray_cluster():
    started = not ray.is_initialized()
    connect("local", num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("ray_ws"))


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    # half a CPU each: the two pool workers and the CLI test's own worker fit in the 2-CPU cluster
    return WorkerResources(num_cpus=0.5, threads=1, compilation_cache_dir=str(tmp_path_factory.mktemp("jax_cache")))


@pytest.fixture(scope="module")
def pool(ray_cluster, ws, resources):
    p = RayPool(ws["model"], 2, resources)
    p.pids()  # both workers have loaded the model
    yield p
    p.close()


@pytest.fixture(scope="module")
def lm(ws):
    return jv.load_model(ws["model"])


def test_statistics_bit_identical_without_ray_and_with_1_and_2_workers(pool, lm, ws):
    ex = tiny_examples(40, vocab=lm.config.vocab_size)
    ref = collect(lm, ex, "abc", **KW)
    for workers in (1, 2):
        got = collect_sharded(pool, ex, "abc", shard_size=6, workers=workers, **KW)
        assert got.equals(ref), workers
        assert got.meta["collect"]["workers"] == workers and got.meta["collect"]["shards"] == 7
    info = pool.info()
    assert {i["xla_flags"] for i in info} == {"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    assert len({i["pid"] for i in info}) == 2 and all(i["calls"] > 0 for i in info)
    # CPU workers pin themselves to a core each (XLA ignores the thread flags above)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        assert sorted(i["cpu_cores"] for i in info) == [[cores[0]], [cores[1]]]
        assert all(i["affinity"] == i["cpu_cores"] for i in info)


def test_sweep_tables_identical_without_ray_and_with_1_and_2_workers(pool, ws, tmp_path):
    spec = SweepSpec.from_dict(tiny_spec(ws, modes=["zero"]))
    ref = run_sweep(spec, tmp_path / "local").table()
    assert len(ref["condition_id"].unique()) == len(spec.conditions()) == 6
    for workers in (1, 2):
        res = run_sweep(spec, tmp_path / f"ray{workers}", pool_factory=lambda model: pool.subset(workers))
        assert len(res.computed) == 6
        pd.testing.assert_frame_equal(res.table(), ref, check_exact=True)
    stats = sorted((tmp_path / "ray2" / "stats").iterdir())
    assert [p.name for p in stats] == [p.name for p in sorted((tmp_path / "local" / "stats").iterdir())]


def test_failure_names_the_condition_and_carries_the_remote_traceback(pool, ws, tmp_path):
    raw = tiny_spec(ws, values=["integrity", "freedom"], methods=["vape"], modes=["zero"], seeds=[0])
    raw["evaluation"]["values"] = "target"  # "freedom" has no evaluation dilemmas
    with pytest.raises(SweepFailed) as e:
        run_sweep(SweepSpec.from_dict(raw), tmp_path / "out", pool_factory=lambda model: pool)
    msg = str(e.value)
    assert "value=freedom" in msg and "no evaluation records" in msg
    assert "Traceback" in msg and "evaluate.py" in msg  # the remote frames
    assert len(pd.read_parquet(tmp_path / "out" / "results.parquet")["condition_id"].unique()) == 1


def test_cli_collect_with_ray_equals_in_process(ray_cluster, ws, resources, tmp_path):
    from jaxvalues.cli import main
    from jaxvalues.stats.checkpoint import load_stats

    res_file = tmp_path / "res.yaml"
    res_file.write_text(yaml.safe_dump({"resources": resources.to_config()}))
    common = ["collect", "--model", ws["model"], "--dataset", ws["activation"], "--batch-size", "4", "--json"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray", "local", "--workers", "1", "--shard-size", "5",
                 "--resources", str(res_file)]) == 0
    a, b = load_stats(tmp_path / "local"), load_stats(tmp_path / "ray")
    assert a.equals(b) and b.meta["collect"]["shards"] == 3


def test_workers_that_cannot_be_scheduled_give_a_clear_error(ray_cluster, ws):
    from jaxvalues.errors import JaxValuesError

    with RayPool(ws["model"], 1, WorkerResources(num_cpus=64), start_timeout_s=1) as p:
        with pytest.raises(JaxValuesError, match="did not start within 1 s.*num_cpus=64"):
            p.pids()


def test_killed_worker_is_restarted_and_the_result_is_unchanged(pool, lm):
    ex = tiny_examples(40, vocab=lm.config.vocab_size, seed=1)
    ref = collect(lm, ex, "abc", **KW)
    before = pool.pids()
    killed = []

    def kill_second_worker(index, stats):
        if not killed:  # mid-run: worker 1 still has queued shards
            os.kill(before[1], signal.SIGKILL)
            killed.append(index)

    got = collect_sharded(pool, ex, "abc", shard_size=4, on_shard=kill_second_worker, **KW)
    assert killed and got.equals(ref)
    after = pool.info()
    assert after[0]["pid"] == before[0] and after[1]["pid"] != before[1]
    assert after[1]["restarted"] and not after[0]["restarted"]
    assert after[1]["calls"] > 0  # the restarted worker reloaded the model and took shards again
    # a worker gone for good (no restart): its shards move to the other worker
    ray.kill(pool.actors[1], no_restart=True)
    again = collect_sharded(pool, ex, "abc", shard_size=4, **KW)
    assert again.equals(ref) and pool.dead == {1}
