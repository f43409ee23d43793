"""The engine's generation (support-rate) protocol, several modes in one run, steer controls and
the authors' random baseline: condition building, scoped generation, the tidy table and the
summarizer's verdicts on simulated tables with a known effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jaxvalues.errors import ConfigError
from jaxvalues.evaluate import controls as ctl
from jaxvalues.evaluate import engine
from jaxvalues.evaluate._testing import toy_model, toy_records
from jaxvalues.evaluate.support import build_support_prompts, evaluate_support

VALUES = ["integrity", "justice"]
L, N = 4, 64


def _maps():
    sup = {"integrity": {0: [1, 2, 3], 3: [4, 5]}, "justice": {1: [7, 8], 2: [9]}}
    con = {"integrity": {0: [3, 10], 2: [11]}, "justice": {1: [8], 3: [12, 13]}}
    return sup, con


def _rates(seed=0):
    return np.random.default_rng(seed).beta(0.5, 2.0, size=(L, N))


def test_build_conditions_for_three_modes_with_both_control_kinds():
    sup, con = _maps()
    conds = engine.build_conditions(sup, mode=["zero", "steer", "steer_against"], controls=3, rates=_rates(),
                                    num_neurons=N, seed=2, targeted_scope="own", conflict_maps=con,
                                    authors_controls=2, num_layers=L)
    by = {c.name: c for c in conds}
    assert len(conds) == 1 + 3 * 2 * (1 + 3 + 2)
    assert by["zero/value:integrity"].neurons == sup["integrity"] and by["zero/value:integrity"].conflict is None
    st, sa = by["steer/value:justice"], by["steer_against/value:justice"]
    assert (st.neurons, st.conflict) == (sup["justice"], con["justice"])
    assert (sa.neurons, sa.conflict) == (con["justice"], sup["justice"])  # the authors' direction 1: swapped
    assert all(c.scope == c.value for c in conds if c.kind != "baseline")
    # steer controls: per layer as many support-only and conflict-only neurons as targeted, none targeted
    up, down = ctl._minus(sup["integrity"], con["integrity"]), ctl._minus(con["integrity"], sup["integrity"])
    both = {l: set(sup["integrity"].get(l, [])) | set(con["integrity"].get(l, [])) for l in range(L)}
    for r in range(3):
        c = by[f"steer/random:integrity#{r:02d}"]
        assert ctl.counts(c.neurons) == ctl.counts(up) and ctl.counts(c.conflict) == ctl.counts(down)
        for l in range(L):
            assert not (set(c.neurons.get(l, [])) | set(c.conflict.get(l, []))) & both[l]
    # the authors' baseline: zero mode draws as many neurons as targeted (with replacement: at most)
    for r in range(2):
        a = by[f"zero/authors:integrity#{r:02d}"]
        assert a.kind == "authors_random" and 1 <= ctl.total(a.neurons) <= ctl.total(sup["integrity"])
        s = by[f"steer/authors:integrity#{r:02d}"]
        size = ctl.authors_size(sup["integrity"], con["integrity"])
        assert size == round((ctl.total(up) + ctl.total(down)) / 2)
        assert ctl.total(s.neurons) <= size and ctl.total(s.conflict) <= size
    # single mode keeps the unprefixed names and the seeds of earlier versions
    one = engine.build_conditions(sup, mode="zero", controls=3, rates=_rates(), num_neurons=N, seed=2)
    assert [c.name for c in one][:3] == ["baseline", "value:integrity", "random:integrity#00"]
    assert one[2].neurons == ctl.draw_controls(sup["integrity"], N, 3, 2000 + 10, "rate_matched", _rates())[0]


def test_build_conditions_errors_name_what_is_missing():
    sup, con = _maps()
    with pytest.raises(ConfigError, match="mode 'steer' needs a conflict neuron set for value 'integrity'"):
        engine.build_conditions(sup, mode="steer", controls=0, num_neurons=N)
    with pytest.raises(ConfigError, match="distinct modes"):
        engine.build_conditions(sup, mode=["zero", "zero"], controls=0, num_neurons=N)
    with pytest.raises(ConfigError, match="authors_controls: the authors' random baseline needs num_layers"):
        engine.build_conditions(sup, controls=0, num_neurons=N, authors_controls=2)


def test_random_authors_splits_over_all_layers_with_replacement():
    draws = ctl.random_authors(40, 6, 10, draws=200, seed=3)
    assert draws == ctl.random_authors(40, 6, 10, draws=200, seed=3)
    sizes = np.array([ctl.total(m) for m in draws])
    assert sizes.max() <= 40 and sizes.min() >= 1
    assert (sizes < 40).mean() > 0.5  # 10 ids per layer: duplicates collapse often
    layers = np.array([[len(m.get(l, [])) > 0 for l in range(6)] for m in draws])
    assert layers.mean(0).min() > 0.5  # every layer is used (random cut points, not a fixed layer)


# ------------------------------------------------------------------ scoped generation, tidy table


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("gen") / "m", records=toy_records())


def test_run_generate_scopes_each_condition_and_equals_generating_it_alone(lm):
    recs = toy_records()
    prompts = build_support_prompts(recs, lm.tokenizer, orders=("aligned_first",), pad_id=lm.pad_id)
    maps = {"integrity": {0: [1, 2]}, "justice": {1: [3]}}
    conds = engine.build_conditions(maps, mode="zero", controls=2, control_kind="layer",
                                    num_neurons=lm.config.num_neurons, seed=1, targeted_scope="own")
    ticks = []
    table, replies = engine.run_generate(lm, prompts, conds, batch_size=4, max_new_tokens=5,
                                         on_batch=lambda: ticks.append(1))
    per_cond = replies.groupby("condition").size()
    assert per_cond["baseline"] == len(recs)  # 6 dilemmas × 1 order
    assert all(per_cond[c.name] == 2 for c in conds if c.kind != "baseline")  # own value: 1 zh + 1 en
    assert sum(ticks) == -(-(6 + 2 * 3 * 2) // 4)
    assert list(table.columns[:4]) == ["condition", "kind", "cond_value", "mode"]
    for col in ("support_aligned", "incomplete", "n_unparseable", "delta_support"):
        assert col in table.columns
    ok = table["support_aligned"].notna()
    assert (table.loc[~ok, "delta_support"].isna()).all()
    # a control's replies in the sweep equal generating it alone with the baseline
    c = next(c for c in conds if c.name == "random:justice#01")
    alone, rep_alone = evaluate_support(lm, prompts, {"baseline": None, c.name: c.intervention()}, max_new_tokens=5,
                                        batch_size=4)
    mine = replies[replies["condition"] == c.name].set_index("record_id")["reply"]
    theirs = rep_alone[rep_alone["condition"] == c.name].set_index("record_id")["reply"].loc[mine.index]
    assert mine.tolist() == theirs.tolist()


# ---------------------------------------------------------------- summarize on simulated tables


def _sim_table(effects: dict, *, n_pairs=30, controls=19, authors=5, sd=4.0, seed=0):
    """A generate-protocol tidy table: 2 values × zh/en × n_pairs dilemmas; effects {mode: shift of
    the targeted condition, in points}; controls ~ N(0, sd) per dilemma plus a per-draw offset."""
    rng = np.random.default_rng(seed)
    rows = []
    recs = [(v, lang, f"eval-{v}-{i:03d}") for v in VALUES for i in range(n_pairs) for lang in ("zh", "en")]
    base = {(pid, lang): rng.uniform(40, 90) for v, lang, pid in recs}

    def add(cond, kind, cv, mode, shift_fn):
        for v, lang, pid in recs:
            if cv is not None and v != cv:
                continue
            b = base[(pid, lang)]
            s = float(np.clip(b + shift_fn(), 0, 100)) if kind != "baseline" else b
            rows.append({"condition": cond, "kind": kind, "cond_value": cv, "mode": mode, "record_id": f"{pid}-{lang}",
                         "pair_id": pid, "value": v, "lang": lang, "support_aligned": s, "incomplete": False,
                         "delta_support": s - b})

    add("baseline", "baseline", None, None, lambda: 0.0)
    for mode, eff in effects.items():
        for v in VALUES:
            add(f"{mode}/value:{v}", "targeted", v, mode, lambda: eff + rng.normal(0, sd))
            for r in range(controls):
                off = rng.normal(0, 1.0)
                add(f"{mode}/random:{v}#{r:02d}", "control", v, mode, lambda: off + rng.normal(0, sd))
            for r in range(authors):
                add(f"{mode}/authors:{v}#{r:02d}", "authors_random", v, mode, lambda: rng.normal(0, sd))
    return pd.DataFrame(rows)


def test_summarize_generate_gives_per_mode_verdicts_in_the_configured_directions():
    tab = _sim_table({"zero": -15.0, "steer": 0.0, "steer_against": -15.0})
    alts = {"zero": "less", "steer": "greater", "steer_against": "less"}
    s = engine.summarize(tab, values=VALUES, alternative=alts, n_boot=200, seed=0)
    assert s["protocol"] == "generate" and s["metric"] == "delta_support" and s["modes"] == list(alts)
    assert s["family_size"] == 3 * 2 * 2  # modes × values × languages: one Holm family
    cells = {(c["mode"], c["value"], c["lang"]): c for c in s["cells"]}
    assert len(cells) == 12 and all(c["alternative"] == alts[c["mode"]] for c in s["cells"])
    for (mode, v, lang), c in cells.items():
        assert c["dilemmas"] == 30 and c["num_controls"] == 19 and c["authors_random_draws"] == 5
        sig = c["verdict"] != "not distinguishable"
        assert sig == (mode != "steer"), (mode, v, lang, c["p_holm"])
        assert c["excess_vs_authors"] == pytest.approx(c["targeted"] - c["authors_random_mean"])
    assert cells[("zero", "integrity", "zh")]["targeted"] < -10
    assert 40 < s["baseline"]["support_aligned"] < 90 and s["baseline"]["incomplete"] == 0
    assert s["mde"]["unit"] == "percentage points of support"
    text = engine.plain_summary(s)
    assert "Steering towards the value" in text and "support for the value-aligned option" in text
    # the wrong direction for steer (a drop is not a "greater" effect) never passes
    s2 = engine.summarize(_sim_table({"steer": -15.0}), values=VALUES, alternative={"steer": "greater"}, n_boot=100)
    assert s2["verdicts"]["significant"] == 0


def test_summarize_generate_leaves_out_incomplete_dilemmas():
    tab = _sim_table({"zero": -15.0}, controls=5, authors=0)
    bad = tab["record_id"] == "eval-integrity-000-zh"
    tab.loc[bad & (tab["kind"] == "baseline"), ["support_aligned", "delta_support"]] = np.nan
    tab.loc[bad & (tab["kind"] == "baseline"), "incomplete"] = True
    tab.loc[bad & (tab["kind"] != "baseline"), "delta_support"] = np.nan
    s = engine.summarize(tab, values=VALUES, alternative="less", n_boot=100)
    c = next(c for c in s["cells"] if (c["value"], c["lang"]) == ("integrity", "zh"))
    assert c["scored"] == 29 and c["incomplete_baseline"] == 1 and c["dilemmas"] == 30
    assert c["incomplete_rate_targeted"] == 0.0 and c["incomplete_rate_controls"] == 0.0
    assert s["baseline"]["incomplete"] == 1 and s["baseline"]["scored"] == 119
    assert "authors_random_mean" not in c


def test_summarize_alternative_must_name_every_mode():
    tab = _sim_table({"zero": 0.0, "steer": 0.0}, controls=3, authors=0, n_pairs=4)
    with pytest.raises(ConfigError, match=r"alternative: no direction for mode\(s\) steer"):
        engine.summarize(tab, values=VALUES, alternative={"zero": "less"}, n_boot=50)


def test_generate_cell_p_values_are_calibrated_with_unparsed_dilemmas():
    """Under the null (targeted exchangeable with the controls and with the authors' draws), with
    20% of each condition's dilemmas unparsed at random (NaN), the one-sided parametric p and
    rank p of the verdict and p_vs_authors reject at rate α."""
    from jaxvalues.evaluate import inference

    rng = np.random.default_rng(5)
    sims, n, R, A, alpha = 2000, 24, 19, 19, 0.05
    rej = {"param": 0, "rank": 0, "authors": 0}
    for i in range(sims):
        draws = rng.normal(0, 1, (1 + R + A, 1)) + rng.normal(0, 4, (1 + R + A, n))  # per-draw offset + noise
        draws[rng.random(draws.shape) < 0.2] = np.nan
        t, c, a = draws[0], draws[1:1 + R], draws[1 + R:]
        res = inference.cell_test(t, c, np.arange(n) // 2, alternative="less", n_boot=10, seed=i)
        rej["param"] += res["p_param"] < alpha
        rej["rank"] += res["p_rank"] <= alpha  # P(p_rank ≤ α) = ⌊α(R+1)⌋/(R+1) = 1/20 exactly
        am = inference._row_means(a)
        rej["authors"] += inference.parametric_p(res["targeted"], am, "less") < alpha
    for k, v in rej.items():
        assert 0.035 < v / sims < 0.065, (k, v / sims)  # ±3.1 binomial sd around 0.05


def test_multi_mode_family_controls_the_familywise_error():
    """Null tables with three modes (each in its own direction): Holm over all 12 cells flags a
    run at most at α = 0.05 (≤ 8 of 80 runs; P(≥ 9 | 0.05) < 1%)."""
    alts = {"zero": "less", "steer": "greater", "steer_against": "less"}
    flagged = 0
    for seed in range(80):
        tab = _sim_table({m: 0.0 for m in alts}, n_pairs=8, controls=19, authors=0, seed=100 + seed)
        # the null: the targeted condition is one more draw like the controls (same per-draw offset law)
        rng = np.random.default_rng(seed)
        for m in alts:
            for v in VALUES:
                rows = tab["condition"] == f"{m}/value:{v}"
                tab.loc[rows, "delta_support"] += rng.normal(0, 1.0)
        s = engine.summarize(tab, values=VALUES, alternative=alts, n_boot=20, seed=seed)
        flagged += s["verdicts"]["significant"] > 0
    assert flagged <= 8, flagged
