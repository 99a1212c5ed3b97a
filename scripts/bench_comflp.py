#!/usr/bin/env python
"""Benchmark: CoMFLP's coarse search, exact top-K against enumeration and beam search.

1. Time of ``exact`` (dynamic programming) for the top-10 proposals at L = 32, k = 16 (C(32, 16)
   = 6.0e8 proposals, far beyond enumeration) and at the sizes where enumeration still runs,
   with enumeration's time beside it (median of repeats, same run).
2. How often beam search (beam 10) misses the true best proposal on random correlation
   matrices (uniform in [0, 1], symmetric), per depth, against the exact answer.

    .venv/bin/python scripts/bench_comflp.py --out runs/bench_comflp.json
    .venv/bin/python scripts/bench_comflp.py --smoke --out /tmp/bench_comflp.json   # seconds

The JSON is rewritten after each part; a part that fails is named in its ``failed`` list.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.analysis.comflp import coarse_search  # noqa: E402
from distill.core.bench_record import BenchRecord  # noqa: E402


def _seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _random_corr(rng: np.random.Generator, layers: int) -> np.ndarray:
    corr = rng.uniform(0, 1, (layers + 1, layers + 1))
    return (corr + corr.T) / 2


def timing(cases: list[tuple[int, int]], repeats: int, enumerate_up_to: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for layers, k in cases:
        corr = _random_corr(rng, layers)
        row = {"layers": layers, "n_remove": k, "proposals": math.comb(layers, k),
               "exact_seconds": _seconds(lambda c=corr, k=k: coarse_search(c, k, "exact", top_k=10), repeats)}
        if math.comb(layers, k) <= enumerate_up_to:
            row["exhaustive_seconds"] = _seconds(lambda c=corr, k=k: coarse_search(c, k, "exhaustive", top_k=10), 1)
            row["same_top10"] = coarse_search(corr, k, "exact") == coarse_search(corr, k, "exhaustive")
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def beam_misses(depths: list[int], matrices: int, beam: int) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for layers in depths:
        k = layers // 2
        missed, gaps = 0, []
        for _ in range(matrices):
            corr = _random_corr(rng, layers)
            best = coarse_search(corr, k, "exact", top_k=1)[0]
            found = coarse_search(corr, k, "beam", top_k=1, beam=beam)[0]
            if found[0] != best[0]:
                missed += 1
                gaps.append(best[1] - found[1])
        row = {"layers": layers, "n_remove": k, "beam": beam, "matrices": matrices, "missed": missed,
               "missed_pct": 100 * missed / matrices, "mean_score_gap_when_missed": statistics.fmean(gaps) if gaps
               else 0.0}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_comflp.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (the test suite runs this)")
    args = ap.parse_args()
    if args.smoke:
        cases, repeats, depths, matrices = [(8, 4), (12, 6)], 1, [8], 5
    else:
        cases, repeats, depths, matrices = [(12, 6), (16, 8), (24, 8), (24, 12), (32, 16), (48, 24)], 5, \
            [8, 12, 16, 24, 32], 200
    out = Path(args.out)
    record = BenchRecord(out, {"smoke": args.smoke, "timing": [], "beam_misses": []})
    record.result["timing"] = record.part("timing", lambda: timing(cases, repeats, enumerate_up_to=2e6)) or []
    record.result["beam_misses"] = record.part("beam misses", lambda: beam_misses(depths, matrices, 10)) or []
    return record.exit_status("bench_comflp", f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
