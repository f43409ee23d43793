"""jaxvalues.distributed without Ray: shards, resources, sweep specs, sharded collection through the
in-process pool, the sweep store (atomic files, resume, failures) and the `sweep` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("torch")

from jaxvalues.distributed._testing import tiny_examples, tiny_spec, tiny_workspace  # noqa: E402
from jaxvalues.distributed.cluster import RayStartError, connect  # noqa: E402
from jaxvalues.distributed.collect import collect_sharded  # noqa: E402
from jaxvalues.distributed.pool import LocalPool  # noqa: E402
from jaxvalues.distributed.resources import WorkerResources  # noqa: E402
from jaxvalues.distributed.shards import plan_shards  # noqa: E402
from jaxvalues.distributed.spec import SweepSpec, load_spec  # noqa: E402
from jaxvalues.distributed.store import TMP_MARK, atomic_write  # noqa: E402
from jaxvalues.distributed.sweep import SweepFailed, run_sweep  # noqa: E402
from jaxvalues.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("dist_ws"))


@pytest.fixture(scope="module")
def pool(ws):
    return LocalPool(ws["model"])


# ------------------------------------------------------------------------------ pure pieces


def test_shards_are_contiguous_and_cover_everything():
    for n, k in [(10, 3), (3, 10), (100, 7), (1, 1)]:
        s = plan_shards(n, num_shards=k)
        assert s[0].start == 0 and s[-1].stop == n and all(a.stop == b.start for a, b in zip(s, s[1:]))
        assert max(map(len, s)) - min(map(len, s)) <= 1
    assert [(s.start, s.stop) for s in plan_shards(7, shard_size=3)] == [(0, 3), (3, 6), (6, 7)]
    assert plan_shards(0, shard_size=3) == []
    with pytest.raises(ConfigError):
        plan_shards(5, num_shards=2, shard_size=2)


def test_resources_env_and_ray_options():
    r = WorkerResources.from_config({"num_cpus": 1, "env": {"FOO": "1"}, "compilation_cache_dir": "/tmp/c"})
    env = r.env_vars()
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and env["FOO"] == "1"
    assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_COMPILATION_CACHE_DIR"] == "/tmp/c"
    opts = r.actor_options()
    assert opts["num_cpus"] == 1 and opts["max_restarts"] == 3 and opts["runtime_env"]["env_vars"] == env
    tpu = WorkerResources.from_config({"num_cpus": 8, "tpus": 4, "resources": {"TPU-v6e-16-head": 1}})
    assert tpu.actor_options()["resources"] == {"TPU-v6e-16-head": 1.0, "TPU": 4.0}
    assert "XLA_FLAGS" not in tpu.env_vars() and "JAX_PLATFORMS" not in tpu.env_vars()
    assert "intra_op_parallelism_threads=4" in WorkerResources(num_cpus=4).env_vars()["XLA_FLAGS"]
    for bad in ({"cpus": 1}, {"num_cpus": -1}, {"resources": {"TPU": 4}}, {"threads": 0}, {"mesh": {"x": 1}}):
        with pytest.raises(ConfigError):
            WorkerResources.from_config(bad)


def test_connect_fails_clearly(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as if no Ray session were running
    with pytest.raises(RayStartError, match="nothing answers"):
        connect("127.0.0.1:1")
    with pytest.raises(RayStartError, match="needs 'local'"):
        connect("")


def test_spec_expands_with_stable_content_hashes(ws):
    spec = SweepSpec.from_dict(tiny_spec(ws))
    conds = spec.conditions()
    # 2 values × (vape + random × 2 seeds) × 1 size × 2 modes × 1 language
    assert len(conds) == 2 * 3 * 2 and len({c.id for c in conds}) == len(conds)
    assert {c.seed for c in conds if c.method == "vape"} == {None}
    again = SweepSpec.from_dict(tiny_spec(ws)).conditions()
    assert [c.id for c in again] == [c.id for c in conds]
    other = tiny_spec(ws)
    other["evaluation"]["gamma"] = 3.0  # changes every result, so every id
    assert not {c.id for c in SweepSpec.from_dict(other).conditions()} & {c.id for c in conds}
    other = tiny_spec(ws)
    other["workers"]["count"] = 7  # does not change results
    assert [c.id for c in SweepSpec.from_dict(other).conditions()] == [c.id for c in conds]
    for bad, match in [({"grid": {"modes": ["steer"]}}, "stance"), ({"grid": {"methods": ["magic"]}}, "magic"),
                       ({"colour": 1}, "colour"), ({"grid": {"sizes": [2]}}, "fractions"),
                       ({"grid": {"values": ["kindness"]}}, "grid.values"),
                       ({"workers": {"resources": {"gpus": 1}}}, "gpus")]:
        raw = tiny_spec(ws)
        for k, v in bad.items():
            raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
        with pytest.raises(ConfigError, match=match):
            SweepSpec.from_dict(raw)


# ------------------------------------------------------------------------------ collection


def test_sharded_collection_equals_one_pass(ws, pool):
    from jaxvalues.stats.collect import collect

    ex = tiny_examples(30, vocab=200)
    kw = dict(batch_size=8, buckets=[32])
    ref = collect(pool.worker.lm, ex, "abc", **kw)
    for shard_size in (1, 7, 30):
        got = collect_sharded(pool, ex, "abc", shard_size=shard_size, **kw)
        assert got.equals(ref), shard_size
        assert got.meta["collect"]["examples"] == 30 and got.meta["collect"]["shards"] == -(-30 // shard_size)


def test_sharded_record_collection_equals_collect_records(ws, pool):
    from jaxvalues.data.io import load_records
    from jaxvalues.stats.records import collect_records

    recs = load_records(ws["activation"], kind="activation")
    kw = dict(token_selection="rationale", batch_size=8, buckets=[64])
    ref = collect_records(pool.worker.lm, recs, scheme="stance", **kw)
    got = collect_sharded(pool, recs, records=True, scheme="stance", shard_size=5, **kw)
    assert got.equals(ref) and got.conditions == ref.conditions


# ------------------------------------------------------------------------------ sweeps


def _no_partials(out: Path):
    return not [p for p in out.rglob("*") if TMP_MARK in p.name]


def test_sweep_runs_resumes_and_recomputes_only_unfinished(ws, tmp_path):
    spec = SweepSpec.from_dict(tiny_spec(ws))
    n = len(spec.conditions())
    full = run_sweep(spec, tmp_path / "full")
    assert len(full.computed) == n and not full.skipped and not full.failed
    table = full.table()
    assert list(dict.fromkeys(table["condition_id"])) == [c.id for c in spec.conditions()]  # spec order
    assert set(table["eval_value"]) == {"integrity", "justice", "harmony"} and (table["lang"] == "en").all()
    summary = pd.read_parquet(tmp_path / "full" / "summary.parquet")
    assert len(summary) == n and (summary["num_neurons"] > 0).all()

    k = 3
    seen = []

    def interrupt(cond, rows):
        seen.append(cond.id)
        if len(seen) == k:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, on_condition=interrupt)
    assert len(list((out / "parts").glob("*.parquet"))) == k and _no_partials(out)
    status = pd.read_parquet(out / "conditions.parquet")["status"].value_counts().to_dict()
    assert status == {"finished": k, "pending": n - k}
    again = run_sweep(spec, out)
    assert len(again.computed) == n - k and sorted(again.skipped) == sorted(seen)
    pd.testing.assert_frame_equal(again.table(), table, check_exact=True)
    assert len(run_sweep(spec, out).computed) == 0 and _no_partials(out)


def test_failed_condition_is_named_with_its_traceback(ws, tmp_path):
    raw = tiny_spec(ws, values=["integrity", "freedom"], methods=["vape"], modes=["zero"], seeds=[0])
    raw["evaluation"]["values"] = "target"  # no evaluation records of "freedom"
    spec = SweepSpec.from_dict(raw)
    with pytest.raises(SweepFailed) as e:
        run_sweep(spec, tmp_path / "out")
    msg = str(e.value)
    assert "value=freedom" in msg and "Traceback" in msg and "no evaluation records" in msg
    fails = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert len(fails) == 1 and "Traceback" in fails[0]["remote_traceback"]
    assert len(pd.read_parquet(tmp_path / "out" / "results.parquet")["condition_id"].unique()) == 1


def test_atomic_write_never_leaves_partial_files(tmp_path):
    def boom(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.parquet", boom)
    assert list(tmp_path.iterdir()) == []


def test_cli_sweep_dry_run_and_resume(ws, tmp_path, capsys):
    from jaxvalues.cli import main

    raw = tiny_spec(ws, values=["integrity"], methods=["vape"], modes=["zero", "mean"], seeds=[0])
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 2
    assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 2
    assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--workers", "2"]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err
    assert np.isfinite(pd.read_parquet(out / "results.parquet")["delta_p"]).all()


def test_example_sweep_spec_loads():
    spec = load_spec(Path(__file__).parents[1] / "configs" / "sweeps" / "example.yaml")
    assert spec.conditions() and spec.resources()
