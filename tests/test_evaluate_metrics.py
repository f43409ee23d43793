"""Per value × language summaries: means, paired deltas, flip rates and seeded bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jaxvalues as jv
from jaxvalues.evaluate.metrics import ALL, bootstrap_ci, effect, summarize_choice, summarize_support


def _table():
    rng = np.random.default_rng(0)
    rows = []
    for value in ("integrity", "justice"):
        for lang in ("zh", "en"):
            for k in range(10):
                rid = f"{value}-{k}-{lang}"
                base = float(rng.uniform(0.3, 1.0))
                for cond, p in (("baseline", base), ("targeted", base - 0.25)):
                    rows.append({"condition": cond, "record_id": rid, "value": value, "lang": lang,
                                 "p_aligned": p, "chose_aligned": p > 0.5, "position_bias": 0.1})
    return pd.DataFrame(rows)


def test_summarize_choice_values_and_groups():
    t = _table()
    s = summarize_choice(t, n_boot=200, seed=0)
    groups = set(zip(s["value"], s["lang"]))
    assert {("integrity", "zh"), ("justice", "en"), ("integrity", ALL), (ALL, "zh"), (ALL, ALL)} <= groups
    assert len(s) == 2 * (4 + 2 + 2 + 1)
    g = t[(t.value == "integrity") & (t.lang == "zh")]
    b, x = g[g.condition == "baseline"], g[g.condition == "targeted"]
    row = s[(s.condition == "targeted") & (s.value == "integrity") & (s.lang == "zh")].iloc[0]
    assert row["n"] == 10
    assert row["p_aligned"] == pytest.approx(x.p_aligned.mean())
    assert row["aligned_rate"] == pytest.approx(x.chose_aligned.mean())
    assert row["delta_p"] == pytest.approx(-0.25)
    assert row["delta_rate"] == pytest.approx(x.chose_aligned.mean() - b.chose_aligned.mean())
    flips = (x.chose_aligned.values != b.chose_aligned.values)
    assert row["flip_rate"] == pytest.approx(flips.mean())
    assert row["flips_to_violating"] == int((b.chose_aligned.values & ~x.chose_aligned.values).sum())
    assert row["flips_to_aligned"] == 0
    assert row["p_aligned_lo"] <= row["p_aligned"] <= row["p_aligned_hi"]
    assert row["delta_p_lo"] == pytest.approx(-0.25) and row["delta_p_hi"] == pytest.approx(-0.25)  # constant shift
    base_row = s[(s.condition == "baseline") & (s.value == ALL) & (s.lang == ALL)].iloc[0]
    assert base_row["delta_p"] == 0 and base_row["flip_rate"] == 0 and base_row["n"] == 40
    assert effect(s, "targeted", metric="delta_p") == pytest.approx(-0.25)


def test_bootstrap_is_seeded_and_correct():
    x = np.random.default_rng(1).normal(size=50)
    assert bootstrap_ci(x, 500, seed=3) == bootstrap_ci(x, 500, seed=3)
    assert bootstrap_ci(x, 500, seed=3) != bootstrap_ci(x, 500, seed=4)
    idx = np.random.default_rng(3).integers(0, 50, size=(500, 50))
    lo, hi = np.percentile(x[idx].mean(1), [2.5, 97.5])
    assert bootstrap_ci(x, 500, seed=3) == pytest.approx((lo, hi))
    t = _table()
    a, b = summarize_choice(t, n_boot=100, seed=5), summarize_choice(t, n_boot=100, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert np.isnan(bootstrap_ci([], 10)[0])


def test_summaries_without_baseline_and_errors():
    t = _table()
    s = summarize_choice(t[t.condition == "targeted"], n_boot=50)
    assert "delta_p" not in s.columns and "p_aligned" in s.columns
    with pytest.raises(jv.JaxValuesError, match="lacks column"):
        summarize_choice(t.drop(columns=["position_bias"]))


def test_summarize_support_counts_missing_and_shift():
    rows = []
    for k in range(6):
        rows.append({"condition": "baseline", "record_id": f"r{k}", "value": "harmony", "lang": "en",
                     "support_aligned": 80.0, "n_unparseable": 0})
        rows.append({"condition": "targeted", "record_id": f"r{k}", "value": "harmony", "lang": "en",
                     "support_aligned": np.nan if k < 2 else 60.0, "n_unparseable": 2 if k < 2 else 0})
    s = summarize_support(pd.DataFrame(rows), n_boot=100)
    row = s[(s.condition == "targeted") & (s.value == "harmony") & (s.lang == "en")].iloc[0]
    assert row["n"] == 6 and row["n_missing"] == 2 and row["n_unparseable_replies"] == 4
    assert row["support_aligned"] == pytest.approx(60.0) and row["shift"] == pytest.approx(-20.0)
