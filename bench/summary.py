"""Write the "Summary" section of bench/RESULTS.md from the sections the scripts wrote.

Copies, per section, its date, load average and every line that states a target or a headline
figure (the bold verdicts), verbatim: the summary adds no numbers of its own. run_all.py calls it
at the end; it can also be run alone.

    .venv/bin/python bench/summary.py [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

ORDER = ["collect", "eval", "roofline", "memory", "distributed", "profile"]
START, END = "<!-- bench:summary start -->", "<!-- bench:summary end -->"


def sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in
            re.finditer(r"<!-- bench:(\w+) start -->\n(.*?)<!-- bench:\1 end -->", text, re.S) if m.group(1) != "summary"}


def headline(body: str) -> list[str]:
    """The bold target / speed-up statements of a section, each joined onto one line."""
    paras = re.split(r"\n\s*\n", body)
    out = []
    for p in paras:
        for item in re.split(r"\n(?=- )", p):
            line = " ".join(x.strip() for x in item.strip().splitlines())
            if ("**" in line and ("Target" in line or "speed-up" in line)) or "13-condition evaluation" in line:
                out.append(line.lstrip("- "))
    return out


def build(text: str) -> str:
    secs = sections(text)
    lines = [START, "## Summary", "",
             "The headline lines of each section below, copied verbatim (see each section for its command, "
             "machine, load and tables).", ""]
    for key in ORDER + sorted(set(secs) - set(ORDER)):
        if key not in secs:
            continue
        body = secs[key]
        title = re.search(r"^## (.+)$", body, re.M)
        date = re.search(r"- date: ([^;]+); load average \(1/5/15 min\) at start ([\d. ]+)", body)
        heads = headline(body)
        if not heads:
            continue
        when = f" ({date.group(1)}, load {date.group(2).strip()})" if date else ""
        lines.append(f"- **{title.group(1) if title else key}**{when}:")
        lines += [f"  - {h}" for h in heads]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write(results: str | Path = C.RESULTS) -> str:
    path = Path(results)
    text = path.read_text() if path.exists() else C.HEADER
    summary = build(text)
    if START in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda m: summary, text, flags=re.S)
    else:  # right after the header, before the first section
        i = text.find("<!-- bench:")
        text = (text.rstrip("\n") + "\n\n" + summary) if i < 0 else (text[:i] + summary + "\n" + text[i:])
    path.write_text(text)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(C.RESULTS))
    args = p.parse_args(argv)
    print(write(args.results))


if __name__ == "__main__":
    main()
