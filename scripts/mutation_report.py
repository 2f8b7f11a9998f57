"""Prints the surviving mutants of a mutmut run and the score, for the mutant names that
match the patterns given (fnmatch): scripts/mutate runs it after mutmut.

    mutation_report.py PATTERN...                  survivors and score
    mutation_report.py --sample N --seed S PATTERN...   N names drawn at random (seeded)
                                                   from those that match, one a line
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Statuses that count as caught: a test failed, or the mutant hung the tests.
CAUGHT = {"killed", "timeout"}


def statuses(patterns: list[str]) -> dict[str, str]:
    """Every mutant whose name matches, with its status ('not checked' before its run)."""
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mutmut"), "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and (not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)):
            found[name] = status
    return found


def report(found: dict[str, str], sample: list[str] | None) -> None:
    if sample is not None:
        found = {name: found[name] for name in sample if name in found}
    counts = Counter(found.values())
    for name in sorted(n for n, s in found.items() if s == "survived"):
        print(f"survived  {name}")
    checked = sum(v for k, v in counts.items() if k != "not checked")
    caught = sum(counts[k] for k in CAUGHT)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if checked:
        share = caught / checked
        line = f"score: {caught}/{checked} caught = {100 * share:.1f}%"
        if sample is not None:  # a random sample: the score of all of them, within a margin
            margin = 1.96 * math.sqrt(share * (1 - share) / checked)
            line += f" (a sample; all of them: {100 * share:.1f}% +/- {100 * margin:.1f}, 95%)"
        print(line)
    print("see one with: .venv/bin/mutmut show <name>")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*")
    parser.add_argument("--sample", type=int, default=0, help="draw this many names")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=Path, help="report on the names in this file only")
    args = parser.parse_args()
    found = statuses(args.patterns)
    if args.sample:
        names = sorted(found)
        for name in random.Random(args.seed).sample(names, min(args.sample, len(names))):
            print(name)
        return 0
    report(found, args.only.read_text().split() if args.only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
