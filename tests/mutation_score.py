"""`make mutation`'s verdict: each mutated module's score and its surviving mutants, from mutmut's results.

    .venv/bin/python tests/mutation_score.py [--goal 85]

The score is mutmut's own: mutants killed (or timed out) over mutants made, skipped ones aside; a
mutant no test reaches ("no tests") counts as surviving. Exits 1 when a module is under the goal.
`.venv/bin/mutmut show NAME` prints a survivor's diff.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goal", type=float, default=85.0, help="percent of mutants killed, per module")
    args = ap.parse_args()
    by_module: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        module = str(meta.relative_to("mutants")).removesuffix(".meta")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            by_module[module][status_by_exit_code[code]].append(name)
    if not by_module:
        sys.exit("mutation_score: no results under mutants/; run `make mutation` first")
    below = []
    print(f"{'module':<32}{'mutants':>8}{'killed':>8}{'survived':>9}{'no test':>8}{'score':>8}")
    for module, statuses in by_module.items():
        made = sum(len(v) for k, v in statuses.items() if k != "skipped")
        killed = len(statuses["killed"]) + len(statuses["timeout"])
        score = 100 * killed / made if made else 100.0
        below += [module] if score < args.goal else []
        print(f"{module:<32}{made:>8}{killed:>8}{len(statuses['survived']):>9}{len(statuses['no tests']):>8}{score:>7.1f}%")
    for module, statuses in by_module.items():
        for status in ("survived", "no tests", "suspicious"):
            for name in statuses[status]:
                print(f"  {status:<10} {name}")
    print(f"goal {args.goal:.0f}% per module: " + ("met" if not below else f"missed in {', '.join(below)}"))
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
