"""`jaxvalues run`: collect → identify → evaluate → report, resumable, into one run directory.

Run directory layout (every file written atomically; a stage is redone only when its hash —
of the config fields it depends on and of its upstream stage — changes):

    config.yaml             the resolved config
    stages.json             {stage: {"hash", "seconds"}} of finished stages
    stats/                  NeuronStats checkpoint (orbax) + summary.json/.parquet
    neurons.parquet         the NeuronSet (value, layer, neuron, score, method, rank)
    identify.json           selection report, per-value counts, layer histogram, overlap, stability
    choice.parquet          per (condition, dilemma): P(aligned) in both orders, position bias
    controls.parquet        per (value, random draw): Δ P(aligned) on that value's dilemmas
    perplexity.parquet      per (condition, text): nll, tokens, ppl
    summary.json            the headline tables (targeted vs random, leakage, perplexity cost)
    report.html + *.png     the report

Evaluation design: conditions "baseline" and "value:{v}" (v's neurons switched off) run over every
value's dilemmas (→ the 12 × 12 leakage matrix; its diagonal is the targeted effect);
R random controls per value, with v's per-layer counts, run on v's dilemmas only.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from jaxvalues.errors import JaxValuesError
from jaxvalues.pipeline.config import stage_hash

STAGES = ("collect", "identify", "evaluate", "report")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._stages_file = self.path / "stages.json"
        self.stages = json.loads(self._stages_file.read_text()) if self._stages_file.exists() else {}

    def done(self, stage: str, h: str) -> bool:
        return self.stages.get(stage, {}).get("hash") == h

    def mark(self, stage: str, h: str, seconds: float):
        self.stages[stage] = {"hash": h, "seconds": round(seconds, 2)}
        self.write_json("stages.json", self.stages)

    def write_json(self, name: str, obj):
        tmp = self.path / (name + ".partial")
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_json_default), encoding="utf-8")
        tmp.replace(self.path / name)

    def write_parquet(self, name: str, df):
        tmp = self.path / (name + ".partial")
        df.to_parquet(tmp, index=False)
        tmp.replace(self.path / name)


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _say(console, msg):
    if console is not None:
        console.print(msg)


def _select(records, values, langs, per_value):
    """First `per_value` records of each (value, language), in the dataset's order."""
    out, seen = [], {}
    for r in records:
        if r.value in values and r.lang in langs:
            k = (r.value, r.lang)
            if seen.get(k, 0) < per_value:
                seen[k] = seen.get(k, 0) + 1
                out.append(r)
    return out


def run_experiment(cfg: dict, out: str | Path, *, max_records: int | None = None, console=None,
                   progress: bool = True) -> dict:
    """Run (or resume) the experiment; returns summary.json's content."""
    import jaxvalues as jv
    from jaxvalues.data.io import load_records

    rd = RunDir(Path(out))
    if max_records is not None:  # a reduced run (CI): cap records per value and language
        cfg = json.loads(json.dumps(cfg))
        cfg["collect"]["records_per_value"] = min(cfg["collect"]["records_per_value"], max_records)
        cfg["evaluate"]["dilemmas_per_value"] = min(cfg["evaluate"]["dilemmas_per_value"], max_records)
        cfg["evaluate"]["perplexity_texts"] = min(cfg["evaluate"]["perplexity_texts"], max_records)
    tmp = rd.path / "config.yaml.partial"
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(rd.path / "config.yaml")
    timings: dict = {}

    t0 = time.time()
    _say(console, f"[bold]loading[/bold] {cfg['model']} ({cfg['dtype']})")
    lm = jv.load_model(cfg["model"], dtype=cfg["dtype"])
    timings["load"] = time.time() - t0
    if lm.tokenizer is None:
        raise JaxValuesError(f"{cfg['model']}: the model has no tokenizer; `jaxvalues run` renders text prompts")

    # ---- collect -----------------------------------------------------------------------------
    from jaxvalues.stats.checkpoint import load_stats, save_stats

    h_collect = stage_hash(cfg, "collect")
    if rd.done("collect", h_collect) and (rd.path / "stats" / "summary.json").exists():
        _say(console, "collect: [green]done[/green] (resumed)")
        stats = load_stats(rd.path / "stats")
    else:
        from jaxvalues.stats.records import collect_records

        t = time.time()
        recs = _select(load_records(cfg["dataset"], kind="activation"), cfg["values"], cfg["languages"],
                       cfg["collect"]["records_per_value"])
        if not recs:
            raise JaxValuesError(f"{cfg['dataset']}: no activation records for values {cfg['values']} and "
                                 f"languages {cfg['languages']}")
        _say(console, f"collect: {len(recs)} activation stories")
        c = cfg["collect"]
        stats = collect_records(lm, recs, scheme="values", token_selection=c["token_selection"], k=c["last_k"],
                                batch_size=c["batch_size"], progress=progress)
        save_stats(stats, rd.path / "stats")
        rd.mark("collect", h_collect, time.time() - t)
    timings["collect"] = rd.stages["collect"]["seconds"]

    # ---- identify ----------------------------------------------------------------------------
    from jaxvalues.identify.neuronset import NeuronSet
    from jaxvalues.identify.vape import vape

    h_identify = stage_hash(cfg, "identify", h_collect)
    idc = cfg["identify"]
    values = [v for v in cfg["values"]]
    if rd.done("identify", h_identify) and (rd.path / "neurons.parquet").exists():
        _say(console, "identify: [green]done[/green] (resumed)")
        ns = NeuronSet.load(rd.path / "neurons.parquet")
        ident = json.loads((rd.path / "identify.json").read_text())
    else:
        t = time.time()
        res = vape(stats, values, filter_rate=idc["filter_rate"], top_rate=idc["top_rate"],
                   activation_bar_ratio=idc["activation_bar_ratio"])
        ns = res.to_neuronset("vape")
        names, overlap = ns.overlap(values)
        hist = ns.layer_histogram(lm.config.num_layers)
        ident = {"selection": res.report(), "counts": {v: len(ns.pairs(v)) if v in ns.values else 0 for v in values},
                 "overlap": {"values": names, "jaccard": np.asarray(overlap).tolist()},
                 "layer_histogram": {v: np.asarray(h).tolist() for v, h in hist.items()}}
        ns.save(rd.path / "neurons.parquet")
        rd.write_json("identify.json", ident)
        rd.mark("identify", h_identify, time.time() - t)
    timings["identify"] = rd.stages["identify"]["seconds"]
    counts = ident["counts"]
    _say(console, "identify: " + ", ".join(f"{v} {n}" for v, n in counts.items()))

    # ---- evaluate ----------------------------------------------------------------------------
    h_eval = stage_hash(cfg, "evaluate", h_identify)
    if rd.done("evaluate", h_eval) and (rd.path / "summary.json").exists():
        _say(console, "evaluate: [green]done[/green] (resumed)")
        summary = json.loads((rd.path / "summary.json").read_text())
    else:
        t = time.time()
        summary = _evaluate(lm, cfg, ns, stats, values, rd, console, progress)
        timings["evaluate"] = time.time() - t
        summary["meta"] = _meta(lm, cfg, timings)
        rd.write_json("summary.json", summary)
        rd.mark("evaluate", h_eval, time.time() - t)

    # ---- report ------------------------------------------------------------------------------
    t = time.time()
    path = _report(rd, cfg, summary, ident, lm.config.num_layers)
    summary["report"] = str(path)
    rd.mark("report", stage_hash(cfg, "report", h_eval), time.time() - t)
    return summary


def _evaluate(lm, cfg, ns, stats, values, rd: RunDir, console, progress: bool = False) -> dict:
    import pandas as pd

    from jaxvalues.data.io import load_records
    from jaxvalues.evaluate.choice import ChoiceScorer, build_choice_prompts, choice_table
    from jaxvalues.evaluate.controls import control_report, diagonal_dominance, random_like
    from jaxvalues.evaluate.metrics import bootstrap_ci
    from jaxvalues.evaluate.perplexity import load_neutral_corpus, perplexity_table, summarize_perplexity
    from jaxvalues.models.intervention import Intervention

    e = cfg["evaluate"]
    N = lm.config.num_neurons
    recs = _select(load_records(cfg["dataset"], kind="evaluation"), values, cfg["languages"], e["dilemmas_per_value"])
    if not recs:
        raise JaxValuesError(f"{cfg['dataset']}: no evaluation dilemmas for values {values} and languages {cfg['languages']}")
    means = None
    if e["mode"] == "mean":
        from jaxvalues.evaluate.controls import pooled_means

        means = pooled_means(stats)

    def make(neurons):
        if e["mode"] == "zero":
            return Intervention.zero(neurons)
        if e["mode"] == "scale":
            return Intervention.scale(neurons, e["gamma"])
        return Intervention.set(neurons, means)

    targeted = [v for v in values if v in ns.values and len(ns.pairs(v))]
    scorer = ChoiceScorer(lm, e["batch_size"])
    prompts = build_choice_prompts(recs, lm.tokenizer)
    conds = {"baseline": None, **{f"value:{v}": make(ns.neurons(v)) for v in targeted}}
    # random controls: same per-layer counts as value v, scored on v's own dilemmas only
    ctrl_of: dict[str, str] = {}
    for k, v in enumerate(targeted):
        if e["controls"]:
            maps = random_like(ns.neurons(v), N, e["controls"], seed=cfg["seed"] * 1000 + k)
            for r, m in enumerate(maps):
                conds[f"random:{v}#{r:02d}"] = make(m)
                ctrl_of[f"random:{v}#{r:02d}"] = v
    names = list(conds)
    row_value = np.array([prompts.meta[d]["value"] for d in prompts.dilemma])
    rows = np.array([np.ones(prompts.num_rows, bool) if n not in ctrl_of else row_value == ctrl_of[n]
                     for n in names])
    n_main = 1 + len(targeted)
    _say(console, f"evaluate: {len(recs)} dilemmas × 2 orders × {n_main} conditions"
                  f" + {len(ctrl_of)} random controls on their value's dilemmas")
    logits = _score(scorer, prompts, [conds[n] for n in names], rows, progress)
    table = choice_table(prompts, logits[:n_main], names[:n_main])

    base = table[table.condition == "baseline"].set_index("record_id")["p_aligned"]
    table["delta_p"] = table["p_aligned"].to_numpy() - base.reindex(table["record_id"]).to_numpy()
    rd.write_parquet("choice.parquet", table)

    # leakage: rows = intervened value, cols = value of the dilemmas; diagonal = targeted effect
    leak = np.full((len(values), len(values)), np.nan)
    for i, v in enumerate(values):
        if v not in targeted:
            continue
        sub = table[table.condition == f"value:{v}"]
        for j, u in enumerate(values):
            leak[i, j] = sub[sub.value == u]["delta_p"].mean()

    ctab = choice_table(prompts, logits[n_main:], names[n_main:]) if ctrl_of else None
    rows_out, shift = [], []
    for v in targeted:
        own = table[(table.condition == f"value:{v}")]
        own_delta = own[own.value == v]["delta_p"].to_numpy()
        if ctab is not None:
            mine = ctab[ctab.condition.map(ctrl_of) == v]
            mine = mine[mine.value == v]
            for name, g in mine.groupby("condition", sort=False):
                b = base.reindex(g["record_id"]).to_numpy()
                rows_out.append({"value": v, "condition": name,
                                 "delta_p": float(np.mean(g["p_aligned"].to_numpy() - b)),
                                 "flip_rate": float(np.mean(g["chose_aligned"].to_numpy() != (b > 0.5)))})
        ctrl_effects = [r["delta_p"] for r in rows_out if r["value"] == v]
        rep = control_report(float(np.mean(own_delta)), ctrl_effects)
        lo, hi = bootstrap_ci(own_delta, e["bootstrap"], seed=cfg["seed"])
        base_v = base.reindex(own[own.value == v]["record_id"]).to_numpy()
        shift.append({"value": v, "neurons": len(ns.pairs(v)), "dilemmas": int(len(own_delta)),
                      "baseline_p": float(np.mean(base_v)), "targeted": rep["target"], "targeted_lo": float(lo),
                      "targeted_hi": float(hi), "control_mean": rep["control_mean"], "control_sd": rep["control_sd"],
                      "z": rep["z"], "p": rep["p_empirical"],
                      "flip_rate": float(np.mean((own[own.value == v]["p_aligned"].to_numpy() > 0.5) != (base_v > 0.5)))})
    rd.write_parquet("controls.parquet", pd.DataFrame(rows_out, columns=["value", "condition", "delta_p", "flip_rate"]))

    # general-capability cost: perplexity of neutral text with all value neurons off
    ppl = None
    if e["perplexity_texts"]:
        corpus = [c for lang in cfg["languages"] for c in load_neutral_corpus(lang)[: e["perplexity_texts"]]]
        union: dict[int, set] = {}
        for v in targeted:
            for layer, ids in ns.neurons(v).items():
                union.setdefault(layer, set()).update(ids)
        pconds = {"baseline": None, "all_values": make({l: sorted(s) for l, s in union.items()})}
        ptab = perplexity_table(lm, pconds, corpus, batch_size=e["batch_size"])
        rd.write_parquet("perplexity.parquet", ptab)
        ppl = summarize_perplexity(ptab)

    base_all = table[table.condition == "baseline"]
    return {
        "name": cfg["name"], "model": cfg["model"], "mode": e["mode"], "gamma": e["gamma"],
        "dilemmas": len(recs), "values": values, "no_neurons": [v for v in values if v not in targeted],
        "baseline": {"p_aligned": float(base_all["p_aligned"].mean()),
                     "aligned_rate": float(base_all["chose_aligned"].mean()),
                     "position_bias": float(base_all["position_bias"].mean())},
        "shift": shift,
        "leakage": {"values": values, "matrix": leak.tolist(),
                    **diagonal_dominance(pd.DataFrame(np.nan_to_num(leak), index=values, columns=values))},
        "perplexity": ppl, "compilations": scorer.compilations(),
    }


def _score(scorer, prompts, conditions, rows, progress: bool):
    """All evaluation conditions in one pass of the scorer, behind one progress bar."""
    if not progress:
        return scorer.logits(prompts, conditions, rows)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("evaluate", total=scorer.num_batches(prompts, len(conditions), rows))
        return scorer.logits(prompts, conditions, rows, on_batch=lambda: bar.advance(task))


def _meta(lm, cfg, timings) -> dict:
    import importlib.metadata as md

    vers = {}
    for pkg in ("jaxvalues", "jax", "flax", "numpy", "transformers"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"model": cfg["model"], "model_sha256": lm.info.get("sha256", ""), "model_type": lm.config.model_type,
            "layers": lm.config.num_layers, "neurons_per_layer": lm.config.num_neurons, "dtype": lm.dtype,
            "python": platform.python_version(), "machine": platform.machine(), "versions": vers,
            "timings_s": {k: round(v, 1) for k, v in timings.items()}}


def _report(rd: RunDir, cfg, summary, ident, num_layers) -> Path:
    import pandas as pd

    from jaxvalues.report.html import write_report

    hist = ident.get("layer_histogram", {})
    layer_counts = pd.DataFrame({v: h for v, h in hist.items()}, index=range(num_layers)).T if hist else None
    shift = pd.DataFrame(summary.get("shift", []))
    ppl = None
    if summary.get("perplexity"):
        ppl = pd.DataFrame([{"condition": c, "lang": lang, **d} for c, per in summary["perplexity"].items()
                            for lang, d in per.items()])
    meta = dict(summary.get("meta", {}))
    meta["baseline"] = summary.get("baseline")
    meta["compilations"] = summary.get("compilations")
    data = {
        "title": f"jaxvalues: {cfg['name']} ({cfg['model']})",
        "meta": meta, "config": yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True),
        "layer_counts": layer_counts, "shift": shift,
        "overlap": (ident["overlap"]["values"], np.array(ident["overlap"]["jaccard"])) if ident.get("overlap") else None,
        "leakage": (summary["leakage"]["values"], np.array(summary["leakage"]["matrix"], float)),
        "perplexity": ppl,
        "tables": {"Neurons per value": pd.DataFrame([{"value": v, "neurons": n} for v, n in ident["counts"].items()])},
    }
    return write_report(rd.path, data)
