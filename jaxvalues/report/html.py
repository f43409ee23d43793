"""A self-contained HTML report (PNG plots embedded as base64, and also written beside it).

`write_report(out_dir, data)` takes plain data, so any stage can be reported alone:
  data["title"]         str
  data["summary_text"]  str: the plain-language paragraph the report opens with
  data["verdict"]       DataFrame: the per value × language verdict table
  data["meta"]          dict: model, hash, versions, timings ... (rendered as a table)
  data["config"]        str (YAML of the run)
  data["layer_counts"]  pandas DataFrame, index = value, columns = layer, cells = neuron counts
  data["overlap"]       (names, [V, V] Jaccard matrix)
  data["shift"]         DataFrame: value (label), targeted, targeted_lo, targeted_hi, control_mean, control_sd
  data["leakage"]       (names, [V, V] matrix: rows = intervened value, cols = evaluated value) or None
  data["perplexity"]    DataFrame (condition, lang, perplexity, ...) or None
  data["tables"]        {title: DataFrame} extra tables
Missing keys are skipped. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    (out_dir / f"{name}.png").write_bytes(data)
    return base64.b64encode(data).decode()


def _heatmap(names, mat, title, out_dir, name, cmap="viridis", center=False, fmt="{:.2f}"):
    plt = _plt()
    mat = np.asarray(mat, float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    kw = {}
    if center:
        v = np.nanmax(np.abs(mat)) or 1.0
        kw = dict(vmin=-v, vmax=v)
    im = ax.imshow(mat, cmap=cmap, **kw)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 14:
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _save(fig, out_dir, name)


def _layer_plot(df, out_dir):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    layers = np.array([int(c) for c in df.columns])
    bottom = np.zeros(len(layers))
    cmap = plt.get_cmap("tab20")
    for k, (value, row) in enumerate(df.iterrows()):
        vals = row.to_numpy(float)
        ax.bar(layers, vals, bottom=bottom, label=str(value), color=cmap(k % 20), width=0.85)
        bottom += vals
    ax.set_xlabel("layer")
    ax.set_ylabel("value neurons")
    ax.set_title("Where the value neurons are (per layer, stacked by value)")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, out_dir, "layers")


METRIC_LABELS = {"delta_logodds": "Δ log-odds(aligned)", "delta_support": "Δ support for the aligned option (points)"}


def _shift_plot(df, out_dir, metric: str = "delta_logodds"):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(df))
    t = df["targeted"].to_numpy(float)
    lo = df.get("targeted_lo", df["targeted"]).to_numpy(float)
    hi = df.get("targeted_hi", df["targeted"]).to_numpy(float)
    ax.bar(x - 0.2, t, 0.4, yerr=[np.abs(t - lo), np.abs(hi - t)], capsize=2, label="value neurons")
    if "control_mean" in df:
        ax.bar(x + 0.2, df["control_mean"].to_numpy(float), 0.4, yerr=df.get("control_sd", 0 * t).to_numpy(float),
               capsize=2, label="random neurons (mean ± sd)", color="#bbbbbb")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, df["value"], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title("Behaviour shift under the intervention (95% CI)")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "shift")


def _table(df, max_rows=60) -> str:
    return df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="t")


def write_report(out_dir: str | Path, data: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(data.get('title', 'jaxvalues report'))}</h1>"]
    if data.get("summary_text"):
        parts += ["<h2>What was found</h2>", f"<p>{html.escape(data['summary_text'])}</p>"]
    if data.get("verdict") is not None and len(data["verdict"]):
        parts += ["<h2>Verdict per value and language</h2>", _table(data["verdict"])]

    def img(b64, alt):
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>'

    if data.get("shift") is not None and len(data["shift"]):
        parts += ["<h2>Behaviour shift: targeted vs random neurons</h2>", img(_shift_plot(data["shift"], out_dir, data.get("metric", "delta_logodds")), "shift"),
                  _table(data["shift"])]
    if data.get("layer_counts") is not None and data["layer_counts"].size:
        parts += ["<h2>Value neurons per layer</h2>", img(_layer_plot(data["layer_counts"], out_dir), "layers")]
    if data.get("overlap") is not None:
        names, mat = data["overlap"]
        parts += ["<h2>Overlap between values (Jaccard)</h2>",
                  img(_heatmap(names, mat, "Jaccard overlap of neuron sets", out_dir, "overlap"), "overlap")]
    if data.get("leakage") is not None:
        names, mat = data["leakage"]
        parts += ["<h2>Leakage: intervening on one value (rows), shift on every value (columns)</h2>",
                  img(_heatmap(names, mat, METRIC_LABELS.get(data.get("metric", "delta_logodds"), "Δ"), out_dir, "leakage", cmap="RdBu_r", center=True), "leakage")]
    if data.get("perplexity") is not None and len(data["perplexity"]):
        parts += ["<h2>General-capability cost: perplexity of neutral text</h2>", _table(data["perplexity"])]
    for title, df in (data.get("tables") or {}).items():
        parts += [f"<h2>{html.escape(title)}</h2>", _table(df)]
    if data.get("meta"):
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in data["meta"].items())
        parts += ["<h2>Run metadata</h2>", f'<table class="t">{rows}</table>']
    if data.get("config"):
        parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(data['config'])}</pre>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%}table.t{border-collapse:collapse;font-size:13px}"
             ".t td,.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.get('title', 'jaxvalues'))}"
           f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.partial")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path
