"""Prints the surviving mutants of a mutmut run and the score, for the mutant names that
match the patterns given (fnmatch): scripts/mutate runs it after mutmut."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Statuses that count as caught: a test failed, or the mutant hung the tests.
CAUGHT = {"killed", "timeout"}


def main(patterns: list[str]) -> int:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mutmut"), "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    statuses: dict[str, str] = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and (not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)):
            statuses[name] = status
    counts = Counter(statuses.values())
    survivors = sorted(n for n, s in statuses.items() if s == "survived")
    for name in survivors:
        print(f"survived  {name}")
    checked = sum(v for k, v in counts.items() if k != "not checked")
    caught = sum(counts[k] for k in CAUGHT)
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if checked:
        print(f"score: {caught}/{checked} caught = {100 * caught / checked:.1f}%")
    print("see one with: .venv/bin/mutmut show <name>")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
