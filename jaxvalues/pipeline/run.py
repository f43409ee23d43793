"""`jaxvalues run`: collect → identify → evaluate → report, resumable, into one run directory.

Run directory layout (every file written atomically; a stage is redone only when its hash —
of the config fields it depends on and of its upstream stage — changes):

    config.yaml             the resolved config
    stages.json             {stage: {"hash", "seconds"}} of finished stages
    stats/                  NeuronStats checkpoint (orbax) + summary.json/.parquet
    neurons.parquet         the NeuronSet (value, layer, neuron, score, method, rank)
    identify.json           selection report, per-value counts, layer histogram, overlap, stability
    results.parquet         the engine's tidy table: per (condition, dilemma) P(aligned), log-odds,
                            label mass and the paired change against the baseline (engine.py)
    perplexity.parquet      per (condition, text): nll, tokens, ppl
    summary.json            the verdict: per value × language cells (targeted vs matched controls,
                            excess, p-values, Holm/BH, verdict, MDE), leakage, perplexity cost
    report.html + *.png     the report

Evaluation design (jaxvalues.evaluate.engine): conditions "baseline" and "value:{v}" (v's neurons
switched off) run over every value's dilemmas (→ the leakage matrix; its diagonal is the targeted
effect); R random controls per value, matched on layer and within-layer firing-rate bin by
default, run on v's dilemmas only. Identification sees only activation stories; they are checked
against the evaluation dilemmas for shared pair_ids and near-duplicate texts before any work.
Split-half stability: the activation records are split by pair_id, collected per half (the
statistics are exact integers, so the merged halves equal a single pass bit for bit) and VAPE
is run on each half; identify.json holds the per-value Jaccard.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.evaluate.engine import check_disjoint, clean, select_records
from jaxvalues.pipeline.config import stage_hash

STAGES = ("collect", "identify", "evaluate", "report")


class RunDir:
    """A run directory. Checked before any work: not a file, not under a file, not another
    command's output. A damaged stages.json means nothing is trusted (every stage recomputed)."""

    def __init__(self, path: Path):
        from jaxvalues.outputs import check_output

        self.path = check_output(path)
        self._stages_file = self.path / "stages.json"
        if (self.path.is_dir() and not self._stages_file.exists()
                and any((self.path / n).exists() for n in ("summary.json", "results.parquet", "per_dilemma.parquet"))):
            raise ConfigError(f"--out {self.path}: holds the output of another command (no stages.json); "
                              "choose another directory for `jaxvalues run`")
        self.path.mkdir(parents=True, exist_ok=True)
        self.damaged: list[str] = []
        self.stages = {}
        if self._stages_file.exists():
            try:
                self.stages = json.loads(self._stages_file.read_text(encoding="utf-8"))
                if not isinstance(self.stages, dict):
                    raise ValueError("not a mapping")
            except (ValueError, UnicodeDecodeError) as e:
                self.damaged.append(f"{self._stages_file}: unreadable ({e}); every stage is recomputed")
                self.stages = {}

    def resume(self, stage: str, h: str, load, console=None):
        """The stored result of a finished stage, or None when it must be (re)computed. A damaged
        stored result (missing or corrupt file) is reported in one line and recomputed."""
        if not self.done(stage, h):
            return None
        try:
            return load()
        except Exception as e:  # noqa: BLE001 - any unreadable stored file means: recompute
            msg = f"{stage}: stored results in {self.path} are damaged ({type(e).__name__}: {e}); recomputing"
            self.damaged.append(msg)
            _warn(console, msg)
            return None

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


def _read_json(path: Path, need: str | None = None) -> dict:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict) or (need and need not in obj):
        raise ValueError(f"{path.name} is not a complete result" + (f" (no {need!r})" if need else ""))
    return obj


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _warn(console, msg):
    """Warnings reach the user even with --json (stdout carries the JSON; this goes to stderr)."""
    if console is not None:
        console.print(f"[yellow]{msg}[/yellow]", markup=True)
    else:
        import sys

        sys.stderr.write(msg + "\n")


def _say(console, msg):
    if console is not None:
        console.print(msg)


def run_experiment(cfg: dict, out: str | Path, *, max_records: int | None = None, console=None,
                   progress: bool = True) -> dict:
    """Run (or resume) the experiment; returns summary.json's content."""
    import jaxvalues as jv
    from jaxvalues.data.io import load_records

    rd = RunDir(Path(out))
    for msg in rd.damaged:
        _warn(console, msg)
    if max_records is not None:  # a reduced run (CI): cap records per value and language
        if not isinstance(max_records, int) or isinstance(max_records, bool) or max_records < 1:
            raise ConfigError(f"--max-records: expected a positive integer, got {max_records!r}")
        cfg = json.loads(json.dumps(cfg))
        cfg["collect"]["records_per_value"] = min(cfg["collect"]["records_per_value"], max_records)
        cfg["evaluate"]["dilemmas_per_value"] = min(cfg["evaluate"]["dilemmas_per_value"], max_records)
        cfg["evaluate"]["perplexity_texts"] = min(cfg["evaluate"]["perplexity_texts"], max_records)
    tmp = rd.path / "config.yaml.partial"
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(rd.path / "config.yaml")
    timings: dict = {}

    acts = select_records(load_records(cfg["dataset"], kind="activation"), cfg["values"], cfg["languages"],
                          cfg["collect"]["records_per_value"])
    evals = select_records(load_records(cfg["dataset"], kind="evaluation"), cfg["evaluate"]["values"],
                           cfg["languages"], cfg["evaluate"]["dilemmas_per_value"])
    if not acts:
        raise JaxValuesError(f"{cfg['dataset']}: no activation records for values {cfg['values']} and "
                             f"languages {cfg['languages']}")
    if not evals:
        raise JaxValuesError(f"{cfg['dataset']}: no evaluation dilemmas for values {cfg['values']} and "
                             f"languages {cfg['languages']}")
    disjoint = check_disjoint(acts, evals)  # before any model work

    t0 = time.time()
    _say(console, f"[bold]loading[/bold] {cfg['model']} ({cfg['dtype']})")
    lm = jv.load_model(cfg["model"], dtype=cfg["dtype"])
    timings["load"] = time.time() - t0
    if lm.tokenizer is None:
        raise JaxValuesError(f"{cfg['model']}: the model has no tokenizer; `jaxvalues run` renders text prompts")
    prompts = _eval_prompts(lm, cfg, evals)  # before any model work: prompts too long for the budget are errors
    if getattr(prompts, "skipped", None):
        _warn(console, f"evaluate: {len(prompts.skipped)} support prompt(s) have evaluate.max_model_len = "
                       f"{cfg['evaluate']['max_model_len']} tokens or more and are not generated; their dilemmas "
                       "are counted as incomplete")

    # ---- collect -----------------------------------------------------------------------------
    from jaxvalues.identify.neuronset import split_halves
    from jaxvalues.stats.checkpoint import load_stats, save_stats

    h_collect = stage_hash(cfg, "collect")
    halves = split_halves(acts, seed=cfg["seed"]) if cfg["identify"]["stability"] else None
    if halves and not (halves[0] and halves[1]):  # fewer than 2 pairs per value: no halves to compare
        _say(console, "identify: split-half stability needs ≥ 2 activation pairs per value; skipped")
        halves = None
    stat_dirs = ["half_a", "half_b"] if halves else ["all"]
    parts = rd.resume("collect", h_collect, lambda: [load_stats(rd.path / "stats" / d) for d in stat_dirs], console)
    if parts is not None:
        _say(console, "collect: [green]done[/green] (resumed)")
    else:
        from jaxvalues.stats.records import collect_records

        t = time.time()
        _say(console, f"collect: {len(acts)} activation stories" + (" (two halves by pair_id)" if halves else ""))
        c = cfg["collect"]
        parts = []
        for d, recs in zip(stat_dirs, halves or [acts]):
            if c["scheme"] == "persona":  # the model's own answers, kept (and resumed) per collect config
                from jaxvalues.stats.persona import collect_persona

                st = collect_persona(lm, recs, values=cfg["values"], max_new_tokens=c["max_new_tokens"],
                                     repetition_penalty=c["repetition_penalty"], batch_size=c["batch_size"],
                                     answers_path=rd.path / "answers" / f"{h_collect}.jsonl", progress=progress)
            else:
                st = collect_records(lm, recs, scheme="values", token_selection=c["token_selection"],
                                     k=c["last_k"], batch_size=c["batch_size"], progress=progress)
            save_stats(st, rd.path / "stats" / d)
            parts.append(st)
        rd.mark("collect", h_collect, time.time() - t)
    stats = parts[0] if len(parts) == 1 else parts[0].merge(parts[1])
    timings["collect"] = rd.stages["collect"]["seconds"]

    # ---- identify ----------------------------------------------------------------------------
    from jaxvalues.identify.neuronset import NeuronSet, from_maps, stability, stance_maps
    from jaxvalues.identify.vape import vape

    h_identify = stage_hash(cfg, "identify", h_collect)
    idc = cfg["identify"]
    values = [v for v in cfg["values"]]
    rates = dict(filter_rate=idc["filter_rate"], top_rate=idc["top_rate"],
                 activation_bar_ratio=idc["activation_bar_ratio"])
    stance = idc["method"] == "vape-stance"
    L, N = lm.config.num_layers, lm.config.num_neurons

    def select(st):
        """-> (the stored NeuronSet, the set applied per value, selection report)."""
        if not stance:
            res = vape(st, values, **rates)
            ns = res.to_neuronset("vape")
            return ns, ns, res.report()
        from jaxvalues.identify.vape import stance_neurons

        ns, report = stance_neurons(st, values, top_rate=idc["top_rate"])
        ns.num_layers, ns.num_neurons = L, N
        return ns, from_maps(stance_maps(ns, values, L, idc["apply"])[0], "vape-stance", num_layers=L,
                             num_neurons=N), report

    stored = rd.resume("identify", h_identify, lambda: (NeuronSet.load(rd.path / "neurons.parquet"),
                                                         _read_json(rd.path / "identify.json")), console)
    if stored is not None:
        _say(console, "identify: [green]done[/green] (resumed)")
        ns, ident = stored
    else:
        t = time.time()
        ns, applied, report = select(stats)
        names, overlap = applied.overlap(values)
        hist = applied.layer_histogram(L)
        ident = {"method": idc["method"], "selection": report,
                 "counts": {v: len(applied.pairs(v)) if v in applied.values else 0 for v in values},
                 "overlap": {"values": names, "jaccard": np.asarray(overlap).tolist()},
                 "layer_histogram": {v: np.asarray(h).tolist() for v, h in hist.items()},
                 "held_out": {"activation_records": len(acts), "evaluation_records": len(evals), **disjoint}}
        if stance:
            from jaxvalues.identify.neuronset import authors_layer_split

            ident["applied"] = {"sets": idc["apply"], "layers": authors_layer_split(L),
                                "counts": "support set per value as applied (kinds on their own layers)"}
        if len(parts) == 2:
            a, b = (select(p)[1] for p in parts)
            ident["stability"] = {"method": f"split-half by pair_id: {idc['method']} on each half, Jaccard of the "
                                            "sets", "records": [len(h) for h in halves],
                                  "jaccard": clean(stability(a, b, values))}
        ns.save(rd.path / "neurons.parquet")
        rd.write_json("identify.json", ident)
        rd.mark("identify", h_identify, time.time() - t)
    timings["identify"] = rd.stages["identify"]["seconds"]
    counts = ident["counts"]
    _say(console, "identify: " + ", ".join(f"{v} {n}" for v, n in counts.items()))

    # ---- evaluate ----------------------------------------------------------------------------
    h_eval = stage_hash(cfg, "evaluate", h_identify)
    summary = rd.resume("evaluate", h_eval, lambda: _read_json(rd.path / "summary.json", need="cells"), console)
    if summary is not None:
        _say(console, "evaluate: [green]done[/green] (resumed)")
    else:
        t = time.time()
        summary = _evaluate(lm, cfg, ns, stats, cfg["evaluate"]["values"], evals, prompts, rd, console, progress)
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


def eval_maps(ns, cfg, values, num_layers) -> tuple[dict, dict | None]:
    """({v: the targeted map}, {v: conflict map} or None): what each value's conditions switch."""
    if cfg["identify"]["method"] == "vape-stance":
        from jaxvalues.identify.neuronset import stance_maps

        sup, con = stance_maps(ns, values, num_layers, cfg["identify"]["apply"])
        return {v: m for v, m in sup.items() if m or con[v]}, con
    return {v: ns.neurons(v) for v in values if v in ns.values and len(ns.pairs(v))}, None


def _progress_bar(progress: bool, total: int, run):
    """run(on_batch) under the project's progress bar (`distributed.progress.ProgressBar`)."""
    from jaxvalues.distributed.progress import ProgressBar

    with ProgressBar(total, "batches", "evaluate", enabled=progress) as bar:
        return run(bar.advance if progress else None)


def _orders(e: dict) -> list[str]:
    """The generation protocol's option orders of an `evaluate` section."""
    return ["aligned_first", "aligned_second"] if e["orders"] == "both" else ["aligned_first"]


def _eval_prompts(lm, cfg, recs):
    """The evaluation prompts of the configured protocol (choice: both orders; generate: the
    configured orders within max_model_len)."""
    e = cfg["evaluate"]
    if e["protocol"] == "choice":
        from jaxvalues.evaluate.choice import build_choice_prompts

        return build_choice_prompts(recs, lm.tokenizer)
    from jaxvalues.evaluate.support import build_support_prompts

    orders = _orders(e)
    try:
        return build_support_prompts(recs, lm.tokenizer, orders=orders, pad_id=lm.pad_id,
                                     max_model_len=e["max_model_len"])
    except ConfigError as err:
        raise ConfigError(f"evaluate.max_model_len: {err}") from None


def _evaluate(lm, cfg, ns, stats, values, recs, prompts, rd: RunDir, console, progress: bool = False) -> dict:
    from jaxvalues.evaluate import engine
    from jaxvalues.evaluate.controls import STEER_MODES, firing_rates, pooled_means
    from jaxvalues.evaluate.perplexity import load_neutral_corpus, perplexity_table, summarize_perplexity

    e = cfg["evaluate"]
    modes = [e["mode"]] if isinstance(e["mode"], str) else list(e["mode"])
    rates = firing_rates(stats)
    means = pooled_means(stats) if "mean" in modes else None
    maps, conflicts = eval_maps(ns, cfg, values, lm.config.num_layers)
    targeted = list(maps)
    conds = engine.build_conditions(maps, mode=modes, controls=e["controls"], control_kind=e["control_kind"],
                                    rates=rates, num_neurons=lm.config.num_neurons, seed=cfg["seed"],
                                    targeted_scope="all" if e["leakage"] else "own", conflict_maps=conflicts,
                                    authors_controls=e["authors_controls"], num_layers=lm.config.num_layers)
    kw = dict(gamma=e["gamma"], means=means, gain=e["gain"])
    n_ctrl = sum(c.kind == "control" for c in conds)
    n_auth = sum(c.kind == "authors_random" for c in conds)
    extra = {}
    if e["protocol"] == "choice":
        from jaxvalues.evaluate.choice import ChoiceScorer

        scorer = ChoiceScorer(lm, e["batch_size"])
        unit = "2 orders"
    else:
        from jaxvalues.evaluate.support import REPLY_STATUSES, num_generate_batches, status_counts

        orders = _orders(e)
        unit = f"{len(orders)} order(s), generating up to {e['max_new_tokens']} tokens"
    _say(console, f"evaluate ({e['protocol']}): {len(recs)} dilemmas × {unit} × {1 + len(targeted) * len(modes)} "
                  f"conditions + {n_ctrl} {e['control_kind']} controls" + (f" + {n_auth} authors' random draws"
                                                                           if n_auth else "")
                  + " on their value's dilemmas")
    if e["protocol"] == "choice":
        table = _progress_bar(progress, engine.num_batches(scorer, prompts, conds),
                              lambda tick: engine.run_conditions(lm, prompts, conds, on_batch=tick, scorer=scorer,
                                                                 **kw))
        extra["compilations"] = scorer.compilations()
    else:
        table, replies = _progress_bar(
            progress, num_generate_batches(prompts, len(conds), e["batch_size"], engine.scope_rows(prompts, conds)),
            lambda tick: engine.run_generate(lm, prompts, conds, batch_size=e["batch_size"],
                                             max_new_tokens=e["max_new_tokens"], on_batch=tick, **kw))
        rd.write_parquet("replies.parquet", replies)
        counts = status_counts(replies, dilemmas=True)
        extra["parse"] = {"by_condition": {c: n for c, n in counts.items() if not c.split("/")[-1].startswith(
            ("random:", "authors:"))}, "all_replies": {s: int(sum(n[s] for n in counts.values()))
                                                       for s in REPLY_STATUSES},
            "skipped_too_long": len(prompts.skipped), "max_model_len": e["max_model_len"],
            "max_new_tokens": e["max_new_tokens"], "orders": orders}
    rd.write_parquet("results.parquet", table)
    rd.write_json("conditions.json", {c.name: {"kind": c.kind, "value": c.value, "mode": c.mode, "scope": c.scope,
                                               "neurons": {str(l): v for l, v in c.neurons.items()},
                                               **({"conflict": {str(l): v for l, v in c.conflict.items()}}
                                                  if c.conflict else {})}
                                      for c in conds})
    summary = engine.summarize(table, values=values, alternative=e["alternative"], alpha=e["alpha"],
                               n_boot=e["bootstrap"], seed=cfg["seed"], min_label_mass=e["min_label_mass"],
                               records=recs, rates=rates, conditions=conds, control_kind=e["control_kind"])

    # general-capability cost: perplexity of neutral text with every value's neurons switched (first mode)
    ppl = None
    if e["perplexity_texts"] and targeted:
        corpus = [c for lang in cfg["languages"] for c in load_neutral_corpus(lang)[: e["perplexity_texts"]]]

        def union(ms):
            out: dict[int, set] = {}
            for m in ms:
                for layer, ids in m.items():
                    out.setdefault(layer, set()).update(ids)
            return {l: sorted(x) for l, x in out.items()}

        first = [c for c in conds if c.kind == "targeted" and c.mode == modes[0]]
        allv = engine.Condition("all_values", "targeted", None, union(c.neurons for c in first), modes[0],
                                conflict=union(c.conflict for c in first) if modes[0] in STEER_MODES else None)
        pconds = {"baseline": None, "all_values": allv.intervention(**kw)}
        ptab = perplexity_table(lm, pconds, corpus, batch_size=e["batch_size"])
        rd.write_parquet("perplexity.parquet", ptab)
        ppl = engine.clean(summarize_perplexity(ptab))
    summary.update({"name": cfg["name"], "model": cfg["model"], "mode": e["mode"], "gamma": e["gamma"],
                    "dilemmas": len(recs), "values": values, "no_neurons": [v for v in values if v not in targeted],
                    "perplexity": ppl, **extra, "plain_summary": engine.plain_summary(summary)})
    return summary


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


VERDICT_COLUMNS = ("mode", "value", "lang", "neurons", "dilemmas", "baseline_p", "baseline_support", "targeted",
                   "targeted_lo", "targeted_hi", "control_mean", "control_sd", "excess", "excess_lo", "excess_hi",
                   "p_param", "p_rank", "p_holm", "verdict", "mde", "rate_targeted", "rate_controls",
                   "authors_random_mean", "excess_vs_authors", "p_vs_authors")


def verdict_frame(summary: dict):
    import pandas as pd

    cells = pd.DataFrame(summary.get("cells") or [])
    return cells[[c for c in VERDICT_COLUMNS if c in cells.columns]] if len(cells) else cells


def _report(rd: RunDir, cfg, summary, ident, num_layers) -> Path:
    import pandas as pd

    from jaxvalues.report.html import write_report

    hist = ident.get("layer_histogram", {})
    layer_counts = pd.DataFrame({v: h for v, h in hist.items()}, index=range(num_layers)).T if hist else None
    verdict = verdict_frame(summary)
    shift = None
    if len(verdict):
        label = verdict["value"] + "/" + verdict["lang"]
        if len(summary.get("modes") or []) > 1:
            label = verdict["mode"] + " " + label
        shift = verdict.assign(value=label)
    ppl = None
    if summary.get("perplexity"):
        ppl = pd.DataFrame([{"condition": c, "lang": lang, **d} for c, per in summary["perplexity"].items()
                            for lang, d in per.items()])
    meta = dict(summary.get("meta", {}))
    meta["baseline"] = summary.get("baseline")
    meta["compilations"] = summary.get("compilations")
    tables = {"Neurons per value": pd.DataFrame([{"value": v, "neurons": n} for v, n in ident["counts"].items()])}
    if ident.get("stability"):
        tables["Split-half stability (Jaccard of the sets found on two halves, by pair_id)"] = pd.DataFrame(
            [{"value": v, "jaccard": j} for v, j in ident["stability"]["jaccard"].items()])
    if summary.get("pooled"):
        tables["Both languages pooled (cluster bootstrap over pair_id; not in the Holm family)"] = pd.DataFrame(
            summary["pooled"])[[c for c in VERDICT_COLUMNS if c in summary["pooled"][0]]]
    data = {
        "title": f"jaxvalues: {cfg['name']} ({cfg['model']})",
        "summary_text": summary.get("plain_summary", "") + " " + " ".join(summary.get("notes") or []),
        "verdict": verdict, "metric": summary.get("metric", "delta_logodds"),
        "meta": meta, "config": yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True),
        "layer_counts": layer_counts, "shift": shift,
        "overlap": (ident["overlap"]["values"], np.array(ident["overlap"]["jaccard"])) if ident.get("overlap") else None,
        "leakage": ((summary["leakage"]["values"], np.array(summary["leakage"]["matrix"], float))
                    if np.isfinite(np.array(summary["leakage"]["matrix"], float)).any() else None),
        "perplexity": ppl, "tables": tables,
    }
    return write_report(rd.path, data)
