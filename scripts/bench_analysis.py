#!/usr/bin/env python
"""Benchmark: cost of the layer x layer similarity analysis against utterances and layers.

For each model (Whisper tiny.en, and random wav2vec2-style models of 12 and 24 layers) and each
number of utterances, the teacher forward pass over the audio is timed alone, then the analysis
(the forward pass included) with all four measures; the figure reported is
``analysis_seconds / forward_seconds`` measured in the same run (forward timed before and after,
mean taken), plus the peak growth of the process's resident memory during the analysis
(sampled every 5 ms). Memory should not grow with the number of utterances. Writes JSON.

    .venv/bin/python scripts/bench_analysis.py --out runs/bench_analysis.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.analysis.similarity import SimilaritySettings, similarity_matrices  # noqa: E402
from distill.models.teacher import load_teacher  # noqa: E402


def random_ssl(folder: Path, layers: int) -> str:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=256, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=1024,
                         conv_dim=(128,) * 7)
    Wav2Vec2Model(cfg).save_pretrained(folder / f"w2v2_{layers}")
    return str(folder / f"w2v2_{layers}")


def batches(n_utts: int, seconds: float = 1.0, per_batch: int = 16):
    g = torch.Generator().manual_seed(0)
    n = int(seconds * 16000)
    out = []
    for start in range(0, n_utts, per_batch):
        b = min(per_batch, n_utts - start)
        out.append({"wav": 0.1 * torch.randn(b, n, generator=g), "lengths": torch.full((b,), n)})
    return out


class PeakRSS:
    """Context manager: peak resident memory growth (MB) over the block, sampled in a thread."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.growth_mb = (self.peak - self.base) / 2**20


def time_forward(model, data) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in data:
            model(b["wav"], b["lengths"])
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_analysis.json")
    p.add_argument("--utterances", default="128,512", help="comma-separated numbers of 1 s utterances")
    p.add_argument("--granularities", default="utterance,crops", help="comma-separated granularities")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(args.out).parent / "bench_models"
    models = {"whisper-tiny.en (4 layers)": "whisper-tiny.en",
              "random wav2vec2, 12 layers": random_ssl(tmp, 12),
              "random wav2vec2, 24 layers": random_ssl(tmp, 24)}
    rows = []
    for label, spec in models.items():
        model = load_teacher(spec)
        for granularity, n in itertools.product(args.granularities.split(","),
                                                [int(x) for x in args.utterances.split(",")]):
            data = batches(n)
            before = time_forward(model, data)
            settings = SimilaritySettings(mode="minibatch", batch_size=128, max_batches=10_000,
                                          granularity=granularity, crop_frames=49)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                _, counts = similarity_matrices(model, data, settings, progress=False)
                total = time.perf_counter() - t0
            forward = (before + time_forward(model, data)) / 2
            row = {"model": label, "layers": model.num_layers, "granularity": granularity, "utterances": n,
                   "forward_seconds": forward,
                   "analysis_seconds_incl_forward": total, "ratio_to_forward": total / forward,
                   "minibatches": counts["minibatches"], "peak_rss_growth_mb": mem.growth_mb}
            rows.append(row)
            print(f"{label:28s} {granularity:9s} {n:5d} utts  forward {forward:6.2f}s  analysis {total:6.2f}s  "
                  f"ratio {row['ratio_to_forward']:5.2f}  peak RSS growth {mem.growth_mb:7.1f} MB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
