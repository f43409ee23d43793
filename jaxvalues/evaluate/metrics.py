"""Per value × language summaries of a per-dilemma table, with paired bootstrap 95% CIs.

Conventions:
- Input: a tidy table with one row per (condition, dilemma): columns condition, record_id,
  value, lang and the metric columns (choice: p_aligned, chose_aligned, position_bias;
  generation: support_aligned). The baseline condition (default "baseline") is the model
  without intervention; effects are paired on record_id: delta = condition − baseline.
- Groups: every (value, lang), every value over both languages (lang "all"), every language
  over all values (value "all"), and everything (value "all", lang "all").
- flip_rate: fraction of a group's dilemmas whose choice (chose_aligned) differs from the
  baseline's; flips_to_violating / flips_to_aligned split it by direction.
- Bootstrap: resample a group's dilemmas with replacement `n_boot` times (the same draws for
  every statistic of that group, so paired deltas stay paired); percentile interval
  [2.5%, 97.5%]. Seeded per group from (seed, group index): identical inputs, identical CIs.
  NaN entries (an unparseable reply) are left out of a statistic and counted in `n_missing`.
"""

from __future__ import annotations

import numpy as np

from jaxvalues.errors import JaxValuesError

ALL = "all"


def bootstrap_ci(x, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, stat=np.nanmean):
    """Percentile bootstrap CI of `stat` over the first axis of `x` -> (lo, hi); (nan, nan) if empty."""
    x = np.asarray(x, np.float64)
    if x.shape[0] == 0 or np.all(np.isnan(x)):
        return (np.nan, np.nan)
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    with np.errstate(all="ignore"), _quiet():
        vals = stat(x[idx], axis=1)
    lo, hi = np.nanpercentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings inside bootstrap replicates."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def _boot(cols: dict, n_boot: int, seed, alpha: float) -> dict:
    """Means and CIs of several aligned columns with shared resampling indices."""
    n = len(next(iter(cols.values())))
    out = {}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n else None
    for name, x in cols.items():
        x = np.asarray(x, np.float64)
        with _quiet():
            out[name] = float(np.nanmean(x)) if n and not np.all(np.isnan(x)) else np.nan
            if idx is None or np.all(np.isnan(x)):
                out[f"{name}_lo"] = out[f"{name}_hi"] = np.nan
                continue
            vals = np.nanmean(x[idx], axis=1)
            lo, hi = np.nanpercentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def _groups(df):
    """(value, lang, sub-frame) for every value×lang, value×all, all×lang and all×all."""
    out = []
    for (v, l), g in df.groupby(["value", "lang"], sort=True):
        out.append((v, l, g))
    for v, g in df.groupby("value", sort=True):
        out.append((v, ALL, g))
    for l, g in df.groupby("lang", sort=True):
        out.append((ALL, l, g))
    out.append((ALL, ALL, df))
    return out


def _check(table, need):
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise JaxValuesError(f"result table lacks column(s) {missing}; expected a per-dilemma table "
                             f"with {sorted(need)}")


def paired(table, baseline: str = "baseline", metrics=("p_aligned",)):
    """Join each condition's rows with the baseline's on record_id: adds `<metric>_base` columns."""
    _check(table, {"condition", "record_id", *metrics})
    base = table[table["condition"] == baseline]
    if base.empty:
        raise JaxValuesError(f"no rows for the baseline condition {baseline!r}; conditions present: "
                             f"{sorted(table['condition'].unique())}")
    cols = ["record_id", *metrics] + (["chose_aligned"] if "chose_aligned" in table.columns and
                                      "chose_aligned" not in metrics else [])  # fmt: skip
    return table.merge(base[cols], on="record_id", how="left", suffixes=("", "_base"))


def summarize_choice(table, baseline: str = "baseline", n_boot: int = 1000, seed: int = 0, alpha: float = 0.05):
    """Per condition × group: n, p_aligned, aligned_rate, position_bias, delta_p, delta_rate,
    flip rates, each mean with a bootstrap CI (`_lo`, `_hi`). Returns a DataFrame."""
    import pandas as pd

    _check(table, {"condition", "record_id", "value", "lang", "p_aligned", "chose_aligned", "position_bias"})
    has_base = baseline in set(table["condition"])
    df = paired(table, baseline, ("p_aligned",)) if has_base else table
    rows = []
    for ci, (cond, cdf) in enumerate(df.groupby("condition", sort=False)):
        for gi, (v, l, g) in enumerate(_groups(cdf)):
            cols = {"p_aligned": g["p_aligned"], "aligned_rate": g["chose_aligned"].astype(float),
                    "position_bias": g["position_bias"]}
            if has_base:
                ch, chb = g["chose_aligned"].astype(bool), g["chose_aligned_base"].astype(bool)
                cols.update(delta_p=g["p_aligned"] - g["p_aligned_base"],
                            delta_rate=ch.astype(float) - chb.astype(float),
                            flip_rate=(ch != chb).astype(float))
            stats = _boot({k: np.asarray(x, np.float64) for k, x in cols.items()}, n_boot, [seed, ci, gi], alpha)
            row = {"condition": cond, "value": v, "lang": l, "n": int(len(g))}
            if has_base:
                row["flips_to_violating"] = int((chb & ~ch).sum())
                row["flips_to_aligned"] = int((~chb & ch).sum())
            rows.append({**row, **stats})
    return pd.DataFrame(rows)


def summarize_support(table, baseline: str = "baseline", n_boot: int = 1000, seed: int = 0, alpha: float = 0.05):
    """Generation protocol: per condition × group: support_aligned (mean, CI), shift (paired
    change vs baseline, CI), n, n_missing (dilemmas without a parsed support in this condition)."""
    import pandas as pd

    _check(table, {"condition", "record_id", "value", "lang", "support_aligned"})
    has_base = baseline in set(table["condition"])
    df = paired(table, baseline, ("support_aligned",)) if has_base else table
    rows = []
    for ci, (cond, cdf) in enumerate(df.groupby("condition", sort=False)):
        for gi, (v, l, g) in enumerate(_groups(cdf)):
            cols = {"support_aligned": np.asarray(g["support_aligned"], np.float64)}
            if has_base:
                cols["shift"] = np.asarray(g["support_aligned"] - g["support_aligned_base"], np.float64)
            stats = _boot(cols, n_boot, [seed, ci, gi], alpha)
            row = {"condition": cond, "value": v, "lang": l, "n": int(len(g)),
                   "n_missing": int(g["support_aligned"].isna().sum())}
            if "n_unparseable" in g.columns:
                row["n_unparseable_replies"] = int(g["n_unparseable"].sum())
            rows.append({**row, **stats})
    return pd.DataFrame(rows)


def effect(summary, condition: str, value: str = ALL, lang: str = ALL, metric: str = "delta_p") -> float:
    """One number from a summary: `metric` of `condition` on the (value, lang) group."""
    sel = summary[(summary["condition"] == condition) & (summary["value"] == value) & (summary["lang"] == lang)]
    if sel.empty:
        raise JaxValuesError(f"summary has no row for condition={condition!r}, value={value!r}, lang={lang!r}")
    return float(sel[metric].iloc[0])
