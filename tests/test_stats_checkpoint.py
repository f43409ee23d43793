"""Statistics checkpoints (orbax + summaries): round trip, corruption errors, `jaxvalues collect` CLI."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from jaxvalues.errors import CheckpointError
from jaxvalues.stats.accumulator import NeuronStats
from jaxvalues.stats.checkpoint import load_stats, save_stats


@pytest.fixture
def stats():
    rng = np.random.default_rng(0)
    s = NeuronStats.zeros(["a", "b", "none"], 2, 6, meta={"model": "tiny", "token_selection": "all"})
    s.add_activations("a", rng.standard_normal((2, 40, 6)).astype(np.float32))
    s.add_activations("b", rng.standard_normal((2, 25, 6)).astype(np.float32) * 3)
    return s


def test_round_trip(stats, tmp_path):
    d = save_stats(stats, tmp_path / "st")
    assert d.is_absolute() and (d / "summary.parquet").is_file()
    back = load_stats(d)
    assert back.equals(stats) and back.meta == stats.meta
    np.testing.assert_array_equal(back.sum, stats.sum)
    info = json.loads((d / "summary.json").read_text())
    assert info["tokens"] == {"a": 40, "b": 25, "none": 0} and info["no_data"] == ["none"]
    table = pd.read_parquet(d / "summary.parquet")
    assert len(table) == 3 * 2 and set(table.columns) >= {"condition", "layer", "tokens", "mean_active_prob"}
    save_stats(back, d)  # overwriting an existing checkpoint works
    assert load_stats(d).equals(stats)


def _largest_state_file(d):
    files = [p for p in (d / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "no_summary", "bad_json", "no_state", "digest"])
def test_corrupt_checkpoint_is_a_clear_error(stats, tmp_path, damage):
    d = save_stats(stats, tmp_path / "st")
    if damage == "garbage":
        f = _largest_state_file(d)
        f.write_bytes(np.random.default_rng(1).bytes(f.stat().st_size))
    elif damage == "truncate":
        f = _largest_state_file(d)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    elif damage == "no_summary":
        (d / "summary.json").unlink()
    elif damage == "bad_json":
        (d / "summary.json").write_text('{"format": ')
    elif damage == "no_state":
        shutil.rmtree(d / "state")
    elif damage == "digest":
        info = json.loads((d / "summary.json").read_text())
        info["sha256"]["active"] = "0" * 64
        (d / "summary.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=str(d)):
        load_stats(d)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_stats(tmp_path / "nope")
