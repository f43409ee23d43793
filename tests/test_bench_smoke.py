"""Smoke test of bench/: every script runs with --quick on a tiny random model and writes its
table. Never asserts anything about timings (numbers live in bench/RESULTS.md only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

SCRIPTS = {
    "roofline": ("bench_roofline.py", "| jaxvalues collect program |"),
    "collect": ("bench_collect.py", "| torch naive (hooks) |"),
    "eval": ("bench_eval.py", "| torch naive (hooks) |"),
    "memory": ("bench_memory.py", "| 8× |"),
    "profile": ("bench_profile.py", "| current (G·S rows per KV head, additive mask) |"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import common

    return common.make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"))


def _run(script: str, model: Path, results: Path, *extra: str) -> str:
    cmd = [sys.executable, str(BENCH / script), "--quick", "--model", str(model), "--results", str(results), *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs_and_writes_its_table(tiny, tmp_path, name):
    script, row = SCRIPTS[name]
    results = tmp_path / "RESULTS.md"
    out = _run(script, tiny, results)
    text = results.read_text()
    assert f"<!-- bench:{name} start -->" in text and f"<!-- bench:{name} end -->" in text
    assert row in text and row in out
    assert "machine:" in text and "--quick" in text


def test_write_section_replaces_its_own_section(tmp_path):
    import argparse

    import common

    args = argparse.Namespace(results=str(tmp_path / "R.md"), json=None)
    info = common.machine_info()
    common.write_section(args, "a", "A", "| x |\n|---|\n| 1 |", info)
    common.write_section(args, "b", "B", "b body", info)
    common.write_section(args, "a", "A", "| x |\n|---|\n| 2 |", info)
    text = (tmp_path / "R.md").read_text()
    assert text.count("<!-- bench:a start -->") == 1 and "| 2 |" in text and "| 1 |" not in text
    assert text.index("bench:a start") < text.index("bench:b start")  # stays in place


@pytest.mark.ray
def test_distributed_script_runs(tiny, tmp_path):
    results = tmp_path / "RESULTS.md"
    _run("bench_distributed.py", tiny, results)
    text = results.read_text()
    assert "| Ray, 2 workers (default: pinned, 1 core each) |" in text and "| Ray, 2 workers, pin_cpus=false |" in text
    assert "statistics identical (bit for bit) across all variants (in-process included): True" in text


def test_run_all_quick_subset(tiny, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--model", str(tiny), "--only",
                        "collect", "--results", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "<!-- bench:collect start -->" in results.read_text()
