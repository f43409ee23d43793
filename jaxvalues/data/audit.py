"""Shortcut audit of a value benchmark: can a reader pick the aligned option without reading the
values in it? `audit(records) -> dict` is pure; `jaxvalues data audit SRC` prints it.

Criteria, each checked per (value, language, kind) unless said otherwise:

- ``length``: option length is the number of non-whitespace characters for zh and of
  whitespace-separated words for en. Over the pairs (records) that have both options, the share
  where the aligned option is longer (ties count as neither) must lie in [0.40, 0.60]
  (``length_share``), and the relative difference of the mean lengths
  |ma - mv| / ((ma + mv) / 2) must be ≤ 0.05 (``length_mean``).
- ``giveaway``: violating options must contain no word of `GIVEAWAY` (evaluative or moralising
  markers that say an option is bad without describing an action: "quietly", "at his expense",
  偷偷, 占便宜 ...). Virtue-signalling words in aligned options (`VIRTUE`: "honestly", "the right
  thing", 坦诚, 顾全大局 ...) are counted and reported too, but do not fail the audit.
- ``value_word``: at most 20% of the activation rationales of a (value, language) may name the
  value itself: its Chinese name for zh (诚信), its English id/name for en ("integrity",
  "rule of law"), plural included. Related words ("honest") are not the value word. Records
  without a rationale (the authors' activation files have none) are not counted; each group
  reports the number of rationales counted (``rationales``), and with none the rate is None.
- ``duplicates``: texts are normalised (casefold, punctuation removed, whitespace collapsed); two
  scenarios (story/context) of one language are near-duplicates when the normalised texts are
  equal or their character 5-gram Jaccard similarity is ≥ 0.6. Any such pair between an
  activation story and an evaluation context fails (``duplicates``); pairs within a kind are
  reported but do not fail.

The result: ``{"ok", "failed": [criterion names, e.g. "length_share prosperity/zh/activation"],
"groups": [one dict per (value, lang, kind)], "overall": {...}, "duplicates": {"across_kinds": [...],
"within_kind": [...]}, "thresholds": {...}}``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

from jaxvalues.data.values import VALUE_IDS, find_value

SHARE_RANGE = (0.40, 0.60)
MAX_REL_DIFF = 0.05
MAX_VALUE_WORD_RATE = 0.20
NEAR_DUP_JACCARD = 0.6
NGRAM = 5

# ----------------------------------------------------------------------------------- lexicons
# Give-away markers in violating options: words that judge the action (or the actor) instead of
# describing it. English entries are regular expressions matched case-insensitively on word
# boundaries; Chinese entries are plain substrings.
_POSS = r"(?:his|her|their|my|your|our|its|the|others'|other people's|the others'|someone else's|everyone's|\w+'s)"
GIVEAWAY_EN = (
    r"quietly", r"secretly", r"sneak(?:s|ed|ing|y|ily)?", r"snuck", r"on the sly", r"covertly", r"stealthily",
    rf"at (?:{_POSS}\s+)?(?:own\s+)?expense", r"selfish(?:ly|ness)?", r"dishonest(?:ly|y)?", r"unfair(?:ly)?",
    r"shameless(?:ly)?", r"pretend(?:s|ed|ing)?", r"feign(?:s|ed|ing)?", rf"behind {_POSS} backs?",
    r"cheat(?:s|ed|ing)?", r"lie", r"lies", r"lied", r"lying", r"liar", r"cover(?:s|ed|ing)? (?:it |this |that )?up",
    r"cover-up", r"shirk(?:s|ed|ing)?", r"brib(?:e|es|ed|ing|ery)", r"deceiv(?:e|es|ed|ing)", r"deceptive(?:ly)?",
    r"fak(?:e|es|ed|ing)", r"slack(?:s|ed|ing)? off", r"turn(?:s|ed|ing)? a blind eye", r"look(?:s|ed|ing)? the other way",
    r"regardless of", r"without regard", r"greed(?:y|ily)?", r"lazily", r"carelessly", r"rudely", r"callous(?:ly)?",
    r"conveniently", r"scapegoat(?:s|ed|ing)?", r"pass(?:es|ed|ing)? the buck", r"under the table",
)
GIVEAWAY_ZH = (
    "偷偷", "悄悄", "暗中", "暗地", "私下", "背着", "瞒着", "假装", "装作", "谎称", "撒谎", "说谎", "欺骗", "蒙骗",
    "蒙混", "糊弄", "敷衍", "占便宜", "自私", "不顾", "只顾", "损人", "昧着良心", "贿赂", "推卸", "偷懒", "钻空子",
    "投机取巧", "走后门", "中饱私囊", "一己私利", "事不关己", "冷漠", "甩锅", "视而不见", "睁一只眼闭一只眼",
)
# Virtue signals in aligned options (reported only).
VIRTUE_EN = (
    r"honest(?:ly)?", r"fair(?:ly)?", r"responsibl[ey]", r"generous(?:ly)?", r"selfless(?:ly)?", r"the right thing",
    r"properly", r"conscientious(?:ly)?", r"with integrity", r"ethical(?:ly)?", r"nobly", r"respectful(?:ly)?",
    r"politely", r"sincere(?:ly)?", r"transparent(?:ly)?", r"openly",
)
VIRTUE_ZH = (
    "坦诚", "诚实", "如实", "负责任", "无私", "大公无私", "顾全大局", "以身作则", "正直", "光明正大", "尽职尽责",
    "主动承担", "真诚", "礼貌地", "公平地", "公开透明", "秉公",
)


def _en_pattern(words) -> re.Pattern:
    return re.compile(r"(?<![\w'])(?:" + "|".join(words) + r")(?![\w])", re.IGNORECASE)


_GIVEAWAY_EN_RE = _en_pattern(GIVEAWAY_EN)
_VIRTUE_EN_RE = _en_pattern(VIRTUE_EN)


def lexicon_hits(text: str | None, lang: str, which: str = "giveaway") -> list[str]:
    """The lexicon entries (`which` = "giveaway" or "virtue") found in `text`, as they appear."""
    if not text:
        return []
    if lang == "zh":
        lex = GIVEAWAY_ZH if which == "giveaway" else VIRTUE_ZH
        return [w for w in lex if w in text]
    pat = _GIVEAWAY_EN_RE if which == "giveaway" else _VIRTUE_EN_RE
    return [m.group(0) for m in pat.finditer(text)]


# ------------------------------------------------------------------------------------- helpers


def text_length(text: str, lang: str) -> int:
    """Characters excluding whitespace (zh) or whitespace-separated words (en)."""
    if lang == "zh":
        return sum(1 for ch in text if not ch.isspace())
    return len(text.split())


def value_word_pattern(value: str, lang: str) -> re.Pattern:
    """What counts as naming the value: the Chinese name (substring) for zh; for en the id and
    the English name, case-insensitive, whole words, with a plural (-s / -ies)."""
    v = find_value(value)
    if lang == "zh":
        return re.compile(re.escape(v.zh) if v else re.escape(value))
    names = {value.replace("_", " ")} | ({v.id.replace("_", " "), v.en} if v else set())
    alts = []
    for n in sorted(names):
        n = n.casefold()
        base = re.escape(n).replace(r"\ ", r"\s+")
        if n.endswith("y"):
            alts.append(base[:-1] + r"(?:y|ies)")
        else:
            alts.append(base + r"s?")
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def normalise(text: str) -> str:
    """Casefold, punctuation and symbols removed, whitespace collapsed."""
    t = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text.casefold())
    return " ".join(t.split())


def ngrams(text: str, n: int = NGRAM) -> frozenset:
    t = normalise(text)
    if len(t) < n:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i : i + n] for i in range(len(t) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def near_duplicates(records, threshold: float = NEAR_DUP_JACCARD):
    """[(record_a, record_b, similarity)] for scenario pairs of one language that are equal after
    `normalise` or whose character 5-gram Jaccard is ≥ `threshold` (only texts sharing a gram are
    compared)."""
    out = []
    by_lang = defaultdict(list)
    for r in records:
        by_lang[r.lang].append((r, normalise(r.scenario), ngrams(r.scenario)))
    for items in by_lang.values():
        index = defaultdict(list)  # gram -> positions, to compare only texts that share grams
        for i, (_, _, g) in enumerate(items):
            for gram in g:
                index[gram].append(i)
        for i, (ra, na, ga) in enumerate(items):
            shared = defaultdict(int)
            for gram in ga:
                for j in index[gram]:
                    if j > i:
                        shared[j] += 1
            for j, inter in shared.items():
                rb, nb, gb = items[j]
                sim = inter / (len(ga) + len(gb) - inter) if (ga or gb) else 1.0
                if na == nb or sim >= threshold:
                    out.append((ra, rb, 1.0 if na == nb else sim))
            for j in range(i + 1, len(items)):  # equal texts too short to share a gram
                if not ga and items[j][1] == na:
                    out.append((ra, items[j][0], 1.0))
    return out


def _round(x, nd=4):
    return None if x is None else round(x, nd)


def _length_figures(rows, lang):
    longer = shorter = tie = 0
    la, lv = [], []
    for a, v in rows:
        a_n, v_n = text_length(a, lang), text_length(v, lang)
        la.append(a_n)
        lv.append(v_n)
        longer += a_n > v_n
        shorter += a_n < v_n
        tie += a_n == v_n
    n = len(rows)
    ma = sum(la) / n if n else None
    mv = sum(lv) / n if n else None
    rel = abs(ma - mv) / ((ma + mv) / 2) if n and (ma + mv) > 0 else (0.0 if n else None)
    return {"pairs": n, "longer": longer, "shorter": shorter, "tie": tie,
            "share_longer": _round(longer / n) if n else None,
            "mean_aligned": _round(ma, 2), "mean_violating": _round(mv, 2), "rel_diff": _round(rel)}  # fmt: skip


def _length_ok(fig) -> tuple[bool, bool]:
    if not fig["pairs"]:
        return True, True
    lo, hi = SHARE_RANGE
    return lo <= fig["share_longer"] <= hi, fig["rel_diff"] <= MAX_REL_DIFF + 1e-12


# --------------------------------------------------------------------------------------- audit


def audit(records) -> dict:
    """Audit `records` (a list of Record); see the module docstring for the criteria."""
    records = list(records)
    groups = defaultdict(list)
    for r in records:
        groups[(r.value, r.lang, r.kind)].append(r)
    order = {v: i for i, v in enumerate(VALUE_IDS)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), k[0], k[1] != "zh", k[2] != "activation"))
    failed, out_groups = [], []
    for value, lang, kind in keys:
        rs = groups[(value, lang, kind)]
        name = f"{value}/{lang}/{kind}"
        rows = [(r.aligned_action, r.violating_action) for r in rs if r.violating_action]
        fig = _length_figures(rows, lang)
        share_ok, mean_ok = _length_ok(fig)
        give = [(r.id, h) for r in rs for h in lexicon_hits(r.violating_action, lang, "giveaway")]
        virtue = [(r.id, h) for r in rs for h in lexicon_hits(r.aligned_action, lang, "virtue")]
        g = {"value": value, "lang": lang, "kind": kind, "records": len(rs), **fig,
             "length_share_ok": share_ok, "length_mean_ok": mean_ok,
             "giveaway_hits": len(give), "giveaway": [list(x) for x in give],
             "virtue_hits": len(virtue), "virtue": [list(x) for x in virtue]}  # fmt: skip
        if not share_ok:
            failed.append(f"length_share {name}")
        if not mean_ok:
            failed.append(f"length_mean {name}")
        if give:
            failed.append(f"giveaway {name}")
        if kind == "activation":
            pat = value_word_pattern(value, lang)
            named = [r.id for r in rs if r.rationale and pat.search(r.rationale)]
            n_rat = sum(1 for r in rs if r.rationale)
            rate = len(named) / n_rat if n_rat else None
            g.update(rationales=n_rat, value_word_count=len(named), value_word_rate=_round(rate),
                     value_word_ids=named, value_word_ok=rate is None or rate <= MAX_VALUE_WORD_RATE + 1e-12)
            if not g["value_word_ok"]:
                failed.append(f"value_word {value}/{lang}")
        out_groups.append(g)

    across, within = [], []
    for ra, rb, sim in near_duplicates(records, NEAR_DUP_JACCARD):
        item = {"a": ra.id, "b": rb.id, "lang": ra.lang, "similarity": _round(sim)}
        (across if ra.kind != rb.kind else within).append(item)
    if across:
        failed.append("duplicates across_kinds")

    overall = {}
    for lang in ("zh", "en"):
        for kind in ("activation", "evaluation"):
            rows = [(r.aligned_action, r.violating_action) for r in records
                    if r.lang == lang and r.kind == kind and r.violating_action]  # fmt: skip
            if not rows:
                continue
            fig = _length_figures(rows, lang)
            sel = [g for g in out_groups if g["lang"] == lang and g["kind"] == kind]
            fig["giveaway_hits"] = sum(g["giveaway_hits"] for g in sel)
            fig["virtue_hits"] = sum(g["virtue_hits"] for g in sel)
            fig["groups_failing_length"] = sum(not (g["length_share_ok"] and g["length_mean_ok"]) for g in sel)
            if kind == "activation":
                n = sum(g["rationales"] for g in sel)
                fig["rationales"] = n
                fig["value_word_rate"] = _round(sum(g["value_word_count"] for g in sel) / n) if n else None
            overall[f"{lang}/{kind}"] = fig
    return {
        "ok": not failed,
        "failed": failed,
        "records": len(records),
        "groups": out_groups,
        "overall": overall,
        "duplicates": {"across_kinds": across, "within_kind": within},
        "thresholds": {"share_longer": list(SHARE_RANGE), "max_rel_diff": MAX_REL_DIFF,
                       "max_value_word_rate": MAX_VALUE_WORD_RATE, "near_dup_jaccard": NEAR_DUP_JACCARD,
                       "ngram": NGRAM},  # fmt: skip
    }


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def format_audit(res: dict) -> str:
    """A human-readable table of an `audit` result."""
    lines = [f"{'value/lang/kind':<36} {'n':>4} {'long/short/tie':>14} {'share':>6} {'m_al':>7} {'m_vi':>7} "
             f"{'rel':>6} {'give':>5} {'virt':>5} {'vword':>6}  status"]  # fmt: skip
    for g in res["groups"]:
        name = f"{g['value']}/{g['lang']}/{g['kind']}"
        lst = f"{g['longer']}/{g['shorter']}/{g['tie']}"
        share = "-" if g["share_longer"] is None else f"{g['share_longer']:.2f}"
        ma = "-" if g["mean_aligned"] is None else f"{g['mean_aligned']:.1f}"
        mv = "-" if g["mean_violating"] is None else f"{g['mean_violating']:.1f}"
        rel = "-" if g["rel_diff"] is None else f"{g['rel_diff']:.3f}"
        vw = "-" if g.get("value_word_rate") is None else f"{g['value_word_rate']:.2f}"
        bad = [c for c, ok in (("share", g["length_share_ok"]), ("mean", g["length_mean_ok"]),
                               ("giveaway", not g["giveaway_hits"]), ("value_word", g.get("value_word_ok", True)))
               if not ok]  # fmt: skip
        status = "ok" if not bad else "FAIL " + ",".join(bad)
        lines.append(f"{name:<36} {g['records']:>4} {lst:>14} {share:>6} {ma:>7} {mv:>7} {rel:>6} "
                     f"{g['giveaway_hits']:>5} {g['virtue_hits']:>5} {vw:>6}  {status}")  # fmt: skip
        if g["kind"] == "activation" and g["rationales"] < g["records"]:
            lines.append(f"    value-word rate over {g['rationales']} rationales ({g['records'] - g['rationales']} "
                         f"of {g['records']} records have none)")
        for rid, hit in g["giveaway"][:5]:
            lines.append(f"    give-away {hit!r} in {rid}")
    lines.append("")
    lines.append("overall:")
    for key, f in res["overall"].items():
        vw = ""
        if f.get("value_word_rate") is not None:
            vw = f", value-word rate {f['value_word_rate']:.2f} over {f['rationales']} rationales"
        elif "rationales" in f:
            vw = ", no rationales (value-word rate not counted)"
        lines.append(f"  {key}: {f['pairs']} pairs, aligned longer {f['longer']}/{f['pairs']} "
                     f"(shorter {f['shorter']}, tie {f['tie']}), means {f['mean_aligned']} vs {f['mean_violating']} "
                     f"(rel {f['rel_diff']}), give-away {f['giveaway_hits']}, virtue {f['virtue_hits']}{vw}, "
                     f"groups failing length {f['groups_failing_length']}")  # fmt: skip
    d = res["duplicates"]
    lines.append(f"near-duplicate scenarios: {len(d['across_kinds'])} across kinds, {len(d['within_kind'])} within a kind")
    for item in (d["across_kinds"] + d["within_kind"])[:20]:
        lines.append(f"    {item['a']} ~ {item['b']} ({item['similarity']:.2f})")
    lines.append("")
    lines.append("ok: audit passed" if res["ok"] else f"FAIL: {len(res['failed'])} criteria failed: "
                 + "; ".join(res["failed"][:30]) + (" ..." if len(res["failed"]) > 30 else ""))  # fmt: skip
    return "\n".join(lines)
