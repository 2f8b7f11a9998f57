"""Prints the surviving mutants of a mutmut run and the score, for the mutant names that
match the patterns given (fnmatch): scripts/mutate runs it after mutmut.

    mutation_report.py PATTERN...                    survivors and score
    mutation_report.py --sample N --seed S PATTERN...  N names drawn at random (seeded),
                                                     stratified by module, one a line
    mutation_report.py --changed BASE PATTERN...     the names of the mutants that touch a
                                                     line changed since git commit BASE
    mutation_report.py --only FILE PATTERN...        survivors and score of those names

A stratified sample gives every module its share of the draw (in proportion to its
mutants, and at least `--least` of them, or all it has), so a small module in scope is
never left out; its score weighs each module's catch rate by the module's share of all the
mutants, with a 95% interval.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import math
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = str(ROOT / ".venv" / "bin" / "mutmut")
#: Statuses that count as caught: a test failed, or the mutant hung the tests.
CAUGHT = {"killed", "timeout"}
#: mutmut's name of a mutant: module, then x_<function> or xǁ<Class>ǁ<method>, then its number.
_NAME = re.compile(r"^(?P<module>.+)\.x(?P<function>[_ǁ].+)__mutmut_(?P<n>\d+)$")


def statuses(patterns: list[str]) -> dict[str, str]:
    """Every mutant whose name matches, with its status ('not checked' before its run)."""
    out = subprocess.run(
        [MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and (not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)):
            found[name] = status
    return found


def module_of(name: str) -> str:
    found = _NAME.match(name)
    return found.group("module") if found else name.rsplit(".", 1)[0]


def stratified(names: list[str], size: int, seed: int, least: int) -> list[str]:
    """``size`` names (about), each module's share in proportion to its mutants but at
    least ``least`` (or all it has)."""
    by_module: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        by_module[module_of(name)].append(name)
    total = len(names)
    rng = random.Random(seed)
    chosen: list[str] = []
    for module in sorted(by_module):
        members = by_module[module]
        share = max(least, round(size * len(members) / total))
        chosen += rng.sample(members, min(share, len(members)))
    return chosen


def report(found: dict[str, str], sample: list[str] | None, population: dict[str, str]) -> None:
    if sample is not None:
        found = {name: found[name] for name in sample if name in found}
    counts = Counter(found.values())
    for name in sorted(n for n, s in found.items() if s == "survived"):
        print(f"survived  {name}")
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    checked = {n: s for n, s in found.items() if s != "not checked"}
    if not checked:
        return
    caught = sum(s in CAUGHT for s in checked.values())
    share = caught / len(checked)
    line = f"score: {caught}/{len(checked)} caught = {100 * share:.1f}%"
    if sample is not None:
        estimate, margin = _stratified_estimate(checked, population)
        line += f" (a sample; all of them: {100 * estimate:.1f}% +/- {100 * margin:.1f}, 95%)"
    print(line)
    for module, (got, of) in sorted(_by_module(checked).items()):
        print(f"  {module}: {got}/{of}")
    print("see one with: .venv/bin/mutmut show <name>")


def _by_module(checked: dict[str, str]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, status in checked.items():
        tally = out[module_of(name)]
        tally[0] += status in CAUGHT
        tally[1] += 1
    return {module: (got, of) for module, (got, of) in out.items()}


def _stratified_estimate(
    checked: dict[str, str], population: dict[str, str]
) -> tuple[float, float]:
    """The share of all mutants caught, estimated from each module's sample weighted by
    its share of the population, and the half-width of its 95% interval (with the finite
    population correction)."""
    sizes = Counter(module_of(name) for name in population)
    total = sum(sizes[m] for m in _by_module(checked))
    estimate = variance = 0.0
    for module, (got, of) in _by_module(checked).items():
        weight, rate = sizes[module] / total, got / of
        estimate += weight * rate
        correction = (sizes[module] - of) / max(1, sizes[module] - 1)
        variance += weight**2 * rate * (1 - rate) / of * correction
    return estimate, 1.96 * math.sqrt(variance)


def changed(base: str, names: list[str]) -> list[str]:
    """The mutants whose change lies on a line that differs from commit ``base``."""
    lines = _changed_lines(base)
    spans = {path: _functions(ROOT / path) for path in lines}
    out = []
    for name in names:
        found = _NAME.match(name)
        if found is None:
            continue
        path = found.group("module").replace(".", "/") + ".py"
        span = spans.get(path, {}).get(found.group("function"))
        if span is None or not any(span[0] <= n <= span[1] for n in lines[path]):
            continue
        first = span[0]
        if any(first + offset - 1 in lines[path] for offset in _mutated_offsets(name)):
            out.append(name)
    return out


def _changed_lines(base: str) -> dict[str, set[int]]:
    diff = subprocess.run(
        ["git", "diff", "-U0", base, "--", "service"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    out: dict[str, set[int]] = defaultdict(set)
    path = ""
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[6:] if line.startswith("+++ b/") else ""
        elif line.startswith("@@") and path.endswith(".py"):
            start, _, count = line.split("+", 1)[1].split(" ", 1)[0].partition(",")
            first, size = int(start), int(count or 1)
            out[path].update(range(first, first + size))
    return out


def _functions(path: Path) -> dict[str, tuple[int, int]]:
    """mutmut's mangled name of each function it mutates (top level, and methods of top
    level classes) -> its first and last line."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[f"_{node.name}"] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    span = (item.lineno, item.end_lineno or item.lineno)
                    out[f"ǁ{node.name}ǁ{item.name}"] = span
    return out


def _mutated_offsets(name: str) -> list[int]:
    """The lines (from 1, the def line) that the mutant changes in its function."""
    shown = subprocess.run(
        [MUTMUT, "show", name], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout
    offsets, at = [], 0
    for line in shown.splitlines():
        if line.startswith("@@"):
            at = int(line.split("-", 1)[1].split(",", 1)[0].split(" ", 1)[0])
        elif line.startswith("-") and not line.startswith("---"):
            offsets.append(at)
            at += 1
        elif line.startswith(" "):
            at += 1
    return offsets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*")
    parser.add_argument("--sample", type=int, default=0, help="draw about this many names")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--least", type=int, default=12, help="a module's least share")
    parser.add_argument("--changed", metavar="BASE", help="mutants of lines changed since BASE")
    parser.add_argument("--only", type=Path, help="report on the names in this file only")
    args = parser.parse_args()
    found = statuses(args.patterns)
    if args.sample:
        print("\n".join(stratified(list(found), args.sample, args.seed, args.least)))
        return 0
    if args.changed:
        print("\n".join(changed(args.changed, sorted(found))))
        return 0
    report(found, args.only.read_text().split() if args.only else None, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
