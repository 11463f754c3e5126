"""Re-judge the claims of committed results with the kit's current rule, from their JSON alone.

    python tools/rejudge.py            # rewrites the claims of every study listed in STUDIES

Each study's runs are read back from its JSON (nothing trains), its claims are recomputed with
:func:`fl_lab.analysis.compare_seeds`, and both files are updated: the JSON's ``claims`` (the
claims it held before are kept as ``claims_before``, with the rule they were judged by) and the
claim lines of the ``.txt`` that printed them, with a line saying when and how they were re-judged.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from fl_lab import ablations, compare, study
from fl_lab.analysis import VERDICTS, format_claims

ROOT = Path(__file__).resolve().parents[1]
RULE = ("paired: the 95 % t interval (n - 1 df) of the per-seed differences excludes 0 (Welch's interval for arms on "
        "different seeds)")
EARLIER_RULE = "the mean difference beyond 2 Welch standard errors"


def _table1_claims(path: Path) -> list:
    """Table 1's claims, judged as the command judged them: on the confirmation rows when it trained them."""
    confirmed = "confirmed" in json.loads(path.read_text())
    return ablations.check_orderings(ablations.load_results(path, confirmed=confirmed))


STUDIES = {  # results file -> how its claims are made from its runs
    "results/table1_cpu/table1.json": _table1_claims,
    "results/table1_cpu/earlier_backbone/table1.json": _table1_claims,
    "results/table1_cpu/from_scratch/table1.json": _table1_claims,
    "results/compare_cpu/compare.json": lambda p: [*compare.check_orderings(compare.load_results(p)),
                                                   *compare.scale_claims(compare.load_results(p))],
    "results/fl_vs_ce/study.json": lambda p: study.gap_claims(study.load_results(p)),
    "results/fl_vs_ce/schedule/study.json": lambda p: study.gap_claims(study.load_results(p)),
}


def rejudge(path: Path, make_claims) -> list[str]:
    """Rewrite one study's claims; return a line per claim whose verdict changed."""
    payload = json.loads(path.read_text())
    before = {c["text"]: c for c in payload.get("claims_before", payload["claims"])}
    claims = make_claims(path)
    if "claims_before" not in payload:
        payload["claims_before"] = payload["claims"]
        payload["claims_before_rule"] = payload.get("claims_rule", EARLIER_RULE)
    payload["claims"] = [dataclasses.asdict(c) for c in claims]
    payload["claims_rule"] = RULE
    path.write_text(json.dumps(payload, indent=2))
    text_file = path.with_suffix(".txt")
    lines = text_file.read_text().splitlines()
    new = dict(zip((c.text for c in claims), format_claims(claims).splitlines(), strict=True))

    def replaced(line: str) -> str:  # a claim's line is its text, ": ", then a verdict
        for text, claim_line in new.items():
            rest = line[len(text) + 2:] if line.startswith(f"{text}: ") else ""
            if any(rest.startswith(verdict) for verdict in VERDICTS):
                return claim_line
        return line

    lines = [replaced(line) for line in lines]
    note = f"(claims re-judged on {time.strftime('%Y-%m-%d')} by python tools/rejudge.py: {RULE})"
    lines = [line for line in lines if not line.startswith("(claims re-judged")] + [note]
    text_file.write_text("\n".join(lines) + "\n")
    return [f"{path.relative_to(ROOT)}: {c.text}: {before[c.text]['verdict']} -> {c.verdict}"
            for c in claims if c.text in before and before[c.text]["verdict"] != c.verdict]


def main() -> int:
    changed = [line for name, make in STUDIES.items() for line in rejudge(ROOT / name, make)]
    print("\n".join(changed) if changed else "no verdict changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
