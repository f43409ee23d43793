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


# ------------------------------------------------------------------------------ hardening


def _with(raw: dict, dotted: str, value) -> dict:
    raw = json.loads(json.dumps(raw))
    *path, last = dotted.split(".")
    d = raw
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value
    return raw


@pytest.mark.parametrize("field, value, match", [
    ("statistics.batch_size", 0, "statistics.batch_size: expected a positive integer, got 0"),
    ("evaluation.batch_size", -4, "evaluation.batch_size: expected a positive integer, got -4"),
    ("statistics.k", 0, "statistics.k: expected a positive integer"),
    ("statistics.shard_size", 0, "statistics.shard_size: expected a positive integer"),
    ("statistics.max_tokens", -1, "statistics.max_tokens: expected a positive integer"),
    ("statistics.batch_size", True, "statistics.batch_size: expected a positive integer, got True"),
    ("statistics.batch_size", 2.5, "statistics.batch_size: expected a positive integer"),
    ("statistics.buckets", [64, 0], "statistics.buckets: expected a positive integer, got 0"),
    ("statistics.token_selection", "some", "statistics.token_selection"),
    ("data.max_evaluation_records", 0, "data.max_evaluation_records: expected null or a positive integer"),
    ("data.activation_lang", "fr", "data.activation_lang"),
    ("data.activation", "/no/such/act.jsonl", "data.activation: no such file"),
    ("selection.filter_rate", 7, r"selection.filter_rate: expected a number in \(0, 1\), got 7"),
    ("selection.activation_bar_ratio", 0, "selection.activation_bar_ratio"),
    ("selection.contrast_metric", "median", "selection.contrast_metric"),
    ("evaluation.gamma", "x", "evaluation.gamma: expected a finite number, got 'x'"),
    ("evaluation.gain", float("nan"), "evaluation.gain: expected a finite number"),
    ("evaluation.seq_multiple", 0, "evaluation.seq_multiple"),
    ("dtype", "float64", r"dtype: expected one of \['float32', 'bfloat16'\], got 'float64'"),
    ("models", ["/no/such/model"], r"models\[0\]: '/no/such/model' is not an existing path"),
    ("models", ["./rel/missing"], r"models\[0\]"),
    ("models", ["not a/hub id/x"], r"models\[0\]"),
])
def test_spec_validate_checks_every_field_in_one_line(ws, field, value, match):
    raw = _with(tiny_spec(ws), field, value)
    with pytest.raises(ConfigError, match=match) as e:
        SweepSpec.from_dict(raw, "spec.yaml")
    assert str(e.value).startswith("spec.yaml: ") and "\n" not in str(e.value)


def test_spec_accepts_packaged_names_hub_ids_and_paths(ws):
    for m in ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", ws["model"]):
        SweepSpec.from_dict(_with(tiny_spec(ws), "models", [m]))
    SweepSpec.from_dict(_with(tiny_spec(ws), "dtype", "bfloat16"))


def test_cli_dry_run_refuses_bad_settings_with_one_line(ws, tmp_path, capsys):
    from jaxvalues.cli import main

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_with(tiny_spec(ws), "statistics.batch_size", 0)))
    assert main(["sweep", "--spec", str(spec_file), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "statistics.batch_size: expected a positive integer, got 0" in err
    assert "Traceback" not in err
    # relative paths in a spec are relative to the spec file (resolved before validation)
    rel = tiny_spec(ws)
    rel["data"]["activation"] = "act.jsonl"
    (tmp_path / "act.jsonl").write_text(Path(ws["activation"]).read_text())
    spec_file.write_text(yaml.safe_dump(rel))
    assert main(["sweep", "--spec", str(spec_file), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    (tmp_path / "file").write_text("x")
    assert main(["sweep", "--spec", str(spec_file), "--out", str(tmp_path / "file"), "--dry-run"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_remote_config_error_is_one_line_with_traceback_kept(ws, tmp_path, monkeypatch):
    from jaxvalues.distributed import evaluate

    def bad_select(*a, **k):
        raise ConfigError("selection.contrast_metric: unknown metric 'x'")

    monkeypatch.setattr(evaluate, "select", bad_select)
    raw = tiny_spec(ws, values=["integrity"], methods=["vape"], modes=["zero"], seeds=[0])
    with pytest.raises(SweepFailed) as e:
        run_sweep(SweepSpec.from_dict(raw, "spec.yaml"), tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.startswith("spec.yaml: ") and "value=integrity" in msg and "selection.contrast_metric" in msg
    fails = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert fails[0]["user_error"] and "Traceback" in fails[0]["remote_traceback"]


def test_damaged_part_is_reported_and_recomputed(ws, tmp_path, capsys):
    raw = tiny_spec(ws, values=["integrity"], methods=["vape"], modes=["zero", "mean"], seeds=[0])
    spec = SweepSpec.from_dict(raw)
    out = tmp_path / "out"
    ref = run_sweep(spec, out)
    table = ref.table()
    victim = spec.conditions()[1]
    part = out / "parts" / f"{victim.id}.parquet"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a copy cut short
    capsys.readouterr()
    again = run_sweep(spec, out)
    err = capsys.readouterr().err
    assert again.computed == [victim.id] and again.skipped == [spec.conditions()[0].id]
    lines = [ln for ln in err.splitlines() if "damaged" in ln]
    assert len(lines) == 1 and victim.id in lines[0] and "computed again" in lines[0]
    pd.testing.assert_frame_equal(again.table(), table, check_exact=True)
    assert (out / "parts" / f"{victim.id}.parquet.damaged").is_file()


def test_out_of_another_spec_is_refused_unless_replace(ws, tmp_path, capsys):
    from jaxvalues.cli import main

    one = tiny_spec(ws, values=["integrity"], methods=["vape"], modes=["zero"], seeds=[0])
    other = _with(one, "evaluation.gamma", 3.0)
    out = tmp_path / "out"
    run_sweep(SweepSpec.from_dict(one), out)
    before = pd.read_parquet(out / "results.parquet")
    with pytest.raises(ConfigError, match="holds the results of another sweep spec.*evaluation.*--replace"):
        run_sweep(SweepSpec.from_dict(other), out)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), before)
    # workers do not change results: the same directory is still this spec's
    assert run_sweep(SweepSpec.from_dict(_with(one, "workers.count", 3)), out).skipped
    spec_file = tmp_path / "other.yaml"
    spec_file.write_text(yaml.safe_dump(other))
    for extra in (["--dry-run"], []):
        assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--json", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "another sweep spec" in err and "\n" not in err
    assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--json", "--replace"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 1
    assert main(["sweep", "--spec", str(spec_file), "--out", str(out), "--json"]) == 0  # now its own
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
