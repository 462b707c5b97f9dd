"""How far idle workers' guesses can take 8 workers: the speculation's limits swept, simulated.

Issue 12 asks for wall time to the knee at 8 workers <= 1/2 of one worker's. The
simulation (``bench/parallel.py --modes sim``) meets it with exactly 1/2 on ``flat`` and
``digits``, whose searches are chains (start weights → first split → [second split →]
the knee's closing trials, the retrain speculated beside them), so any time the workers
spend between rounds tips the measured ratio over. Would guessing more help? This runs
the same simulation (no Optuna, no sleeping: the sampler's decisions alone, deterministic)
with the speculation's limits in ``motune.sampler`` changed: guesses running at once
(``_MAX_GUESSES``), the prior a guess needs (``_MIN_GUESS_P``), finished guesses left
unread before guessing stops (``_MAX_UNREAD``), and the arc shapes a running trial's
result is predicted with (``_SHAPES``, Bézier weights: 1 a parabola, larger sharper).

Per setting and front: 8 workers' wall time to the knee ÷ one worker's, trials ÷ one
worker's, and whether the knee is the same at 1, 2, 4, 8 and 16 workers. The first row is
the sampler as shipped. Targets: wall <= 0.5, trials <= 2, same knee.

    python bench/guess_limits.py     # ~1 min
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, machine_info, table, write_json
from parallel import Front, fronts, simulate

import motune.sampler as sampler

SHIPPED = {k: getattr(sampler, k) for k in ("_MAX_GUESSES", "_MIN_GUESS_P", "_MAX_UNREAD", "_SHAPES")}


def settings() -> list[dict[str, Any]]:
    """The shipped limits, then each combination swept."""
    rows = [dict(SHIPPED)]
    for guesses, prior, unread, shapes in itertools.product(
        (2, 3, 4, 6), (0.3, 0.15), (6, 100), ((1.0,), (1.0, 3.0), (1.0, 3.0, 10.0, 30.0))
    ):
        row = {"_MAX_GUESSES": guesses, "_MIN_GUESS_P": prior, "_MAX_UNREAD": unread, "_SHAPES": shapes}
        if row != SHIPPED:
            rows.append(row)
    return rows


def evaluate(limits: dict[str, Any], front_of: dict[str, Front]) -> dict[str, dict[str, Any]]:
    """Every front of ``front_of`` simulated under ``limits`` (restored afterwards)."""
    for name, value in limits.items():
        setattr(sampler, name, value)
    sampler._next_step.cache_clear()  # remembered steps do not depend on the limits, but keep runs independent
    try:
        out = {}
        for name, front in front_of.items():
            runs = {w: simulate(front, w, budget=60) for w in (1, 2, 4, 8, 16)}
            one, eight = runs[1], runs[8]
            out[name] = {"wall": eight["wall_units"] / one["wall_units"], "trials": eight["trials"] / one["trials"],
                         "same_knee": all(r["knee_lambda"] == one["knee_lambda"] for r in runs.values())}
        return out
    finally:
        for name, value in SHIPPED.items():
            setattr(sampler, name, value)
        sampler._next_step.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(RESULTS / "guess_limits.json"), help="where to write the JSON results")
    args = parser.parse_args()
    results, rows, front_of = [], [], fronts()  # built once: 200,001-point fronts and the digits sweep
    for limits in settings():
        per_front = evaluate(limits, front_of)
        results.append({"limits": {k: list(v) if isinstance(v, tuple) else v for k, v in limits.items()},
                        "fronts": per_front})
        label = (f"{limits['_MAX_GUESSES']} / {limits['_MIN_GUESS_P']} / {limits['_MAX_UNREAD']} / "
                 f"{','.join(f'{s:g}' for s in limits['_SHAPES'])}")
        cells = [f"{f['wall']:.2f} / {f['trials']:.2f}{'' if f['same_knee'] else ' MOVED'}" for f in per_front.values()]
        rows.append([label + (" (shipped)" if limits == SHIPPED else ""), *cells])
        print(rows[-1], file=sys.stderr, flush=True)
    names = list(results[0]["fronts"])
    print(table(rows, ["guesses / prior / unread / shapes", *names]))
    print("\ncells: 8 workers' wall time to the knee / trials, each over one worker's (targets <= 0.5 / <= 2)")
    for name in names:
        ok = [r for r in results if r["fronts"][name]["trials"] <= 2 and r["fronts"][name]["same_knee"]]
        best = min((r["fronts"][name]["wall"] for r in ok), default=float("nan"))
        print(f"{name}: best wall within 2x the trials and the same knee: {best:.2f}")
    out = write_json(args.json, {"benchmark": "guess_limits", "machine": machine_info(), "command": " ".join(sys.argv),
                                 "shipped": {k: list(v) if isinstance(v, tuple) else v for k, v in SHIPPED.items()},
                                 "settings": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
