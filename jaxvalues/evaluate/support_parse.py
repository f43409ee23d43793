"""Parse the two support percentages out of a free-text reply to the support-rate prompt.

The prompt (the authors' text, `jaxvalues.data.authors.SUPPORT_USER`) asks for
"最终结论：选项A：[支持率，百分比形式] 选项B：[支持率，百分比形式]" (the marked en translation:
"Final conclusion: Option A: [support rate, as a percentage] Option B: ..."). Replies are messy; the parser:
- normalizes with NFKC (full-width colons, percent signs, digits and letters become ASCII),
  drops markdown/bracket decoration (* # ` [ ] 【 】 |);
- starts at the first "最终结论" / "结论" / "final conclusion" / "conclusion" when there is one
  (falls back to the whole reply when nothing parses after it);
- for each label finds the first "选项A", "A选项", "Option A", "choice A" or a bare "A" followed
  by ":" / "." / ")" / "=" / a number, then up to 40 characters of connecting words ("的支持率为",
  " (support rate): ", a parenthesised action) that contain no digit and no other option
  label, then the number (integers or decimals, "%" optional); also the reverse form with a
  preposition, "60% support to Option A" / "70% for option B" / "70%投给选项A", whose number then
  belongs to that label even when it follows another label's mention;
- numbers: percentages ("60%", "60 %", "60％", "60 percent"), bare numbers (read as percent),
  fractions "2/3" (= 66.67%; "2／3" after NFKC) and decimals in [0, 1] without "%": when BOTH
  rates are such decimals ("0.6" / "0.4") they are read as shares of 1 (60% / 40%).
Statuses (`STATUSES`): "ok" (both found, each in [0, 100], a + b = 100 ± `SUM_TOLERANCE`),
"inconsistent" (both found and in range but their sum is off by more than the tolerance:
"60% / 60%"; the values are kept for inspection, never renormalised, and the reply does not
count: `for_label` is None), "partial" (one found), "out_of_range" (a number above 100),
"unparseable" (none). Nothing is dropped: callers count every status.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

STATUSES = ("ok", "inconsistent", "partial", "out_of_range", "unparseable")
SUM_TOLERANCE = 5.0  # percentage points

_DECOR = re.compile(r"[*#`\[\]【】|~]")
_ANCHOR = re.compile(r"最终结论|結論|结论|final\s+conclusions?|conclusions?", re.I)
_OPT_WORD = r"(?:选项|選項|方案|(?i:option|choice))"
_PAREN = r"(?:\s*\([^()\n]{0,200}\))?"
_NUM = r"(\d{1,3}(?:\.\d+)?|\.\d+)(?:\s*/\s*(\d{1,3})(?![\d.]))?\s*(%|percent|个百分点)?"


def _other_label_guard() -> str:
    # a gap character must not start another option mention
    return rf"(?!{_OPT_WORD}|(?<![A-Za-z])[AB](?![A-Za-z]))[^0-9]"


def _label_patterns(label: str):
    gap = rf"(?:{_other_label_guard()}){{0,40}}?"
    lab = rf"(?i:{label})"
    heads = (
        rf"{_OPT_WORD}\s*{lab}(?![A-Za-z])",  # 选项A / Option A / option a
        rf"(?<![A-Za-z0-9]){label}\s*(?:选项|選項|方案)",  # A选项
        rf"(?<![A-Za-z0-9]){label}(?=\s*[:.)=\-]|\s*\d)",  # bare A: / A. / A 70%
    )
    fwd = [re.compile(rf"{h}{_PAREN}{gap}(?<![0-9.]){_NUM}") for h in heads]
    # "60% support to Option A", "给选项A 70%" needs an explicit preposition to count as reverse
    rev = re.compile(rf"{_NUM}[^0-9]{{0,20}}?(?:(?i:to|for)\s+(?:(?i:the)\s+)?|给|支持|投给){_OPT_WORD}\s*{lab}"
                     rf"(?![A-Za-z])")
    return fwd, rev


_PATTERNS = {lab: _label_patterns(lab) for lab in ("A", "B")}


@dataclass(frozen=True)
class SupportParse:
    a: float | None  # support for option A, in percent
    b: float | None  # support for option B, in percent
    status: str  # one of STATUSES

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def for_label(self, label: str) -> float | None:
        return (self.a if label == "A" else self.b) if self.ok else None


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKC", text or "")
    return _DECOR.sub(" ", t)


def _value(m) -> tuple[float, bool]:
    """(number, on the percent scale) of a _NUM match: "2/3" -> (66.67, True)."""
    num = float(m.group(1))
    den = m.group(2)
    if den is not None:
        d = float(den)
        return (num / d * 100 if d else float("inf")), True
    return num, bool(m.group(3))


def _find(text: str, label: str, claimed: set):
    """(number, on the percent scale, position) of the first mention of `label` with a number, or
    None. A forward match whose number another label claims ("40% to Option B") is skipped."""
    fwd, rev = _PATTERNS[label]
    best = None
    for pat in fwd:
        for m in pat.finditer(text):
            if m.start(1) in claimed:
                continue
            if best is None or m.start() < best[2]:
                best = (*_value(m), m.start())
            break
    if best is None:
        m = rev.search(text)
        if m:
            best = (*_value(m), m.start())
    return best


def _parse_window(text: str):
    claims = {lab: {m.start(1) for m in _PATTERNS[lab][1].finditer(text)} for lab in ("A", "B")}
    return _find(text, "A", claims["B"]), _find(text, "B", claims["A"])


def parse_support(reply: str) -> SupportParse:
    """The two support rates of a reply (see the module docstring for the accepted forms)."""
    text = normalize(reply)
    m = _ANCHOR.search(text)
    a = b = None
    if m:
        a, b = _parse_window(text[m.end():])
    if a is None or b is None:
        a2, b2 = _parse_window(text)
        if (a2 is not None) + (b2 is not None) > (a is not None) + (b is not None):
            a, b = a2, b2
    if a is None and b is None:
        return SupportParse(None, None, "unparseable")
    if a is not None and b is not None and not a[1] and not b[1] and a[0] <= 1 and b[0] <= 1:
        a, b = (a[0] * 100, True, a[2]), (b[0] * 100, True, b[2])  # shares of 1: 0.6 / 0.4
    va = None if a is None else round(a[0], 6)
    vb = None if b is None else round(b[0], 6)
    if any(v is not None and v > 100 for v in (va, vb)):
        return SupportParse(va, vb, "out_of_range")
    if va is None or vb is None:
        return SupportParse(va, vb, "partial")
    if abs(va + vb - 100.0) > SUM_TOLERANCE:
        return SupportParse(va, vb, "inconsistent")
    return SupportParse(va, vb, "ok")
