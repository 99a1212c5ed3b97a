#!/usr/bin/env python
"""Benchmark: cost of the layer x layer similarity analysis against utterances and layers.

For each model (Whisper tiny.en, and random wav2vec2-style models of 12 and 24 layers) and each
number of utterances, the teacher forward pass over the audio is timed alone, then the analysis
(the forward pass included) with all four measures; the figure reported is
``analysis_seconds / forward_seconds`` measured in the same run (forward timed before and after,
mean taken), plus the peak growth of the process's resident memory during the analysis
(sampled every 5 ms). Memory should not grow with the number of utterances. Writes JSON.

    .venv/bin/python scripts/bench_analysis.py --out runs/bench_analysis.json
    .venv/bin/python scripts/bench_analysis.py --smoke --out /tmp/bench_analysis.json   # seconds, run by the tests

The JSON is rewritten after every row; a row that fails is named in its ``failed`` list with its
error, the others still run, and the script exits non-zero. ``--smoke``: random models of 2 and 3
layers (no Whisper), 8 and 16 utterances, mini-batches of 8 samples.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.analysis.similarity import SimilaritySettings, similarity_matrices  # noqa: E402
from distill.core.bench_record import BenchRecord  # noqa: E402
from distill.models.teacher import load_teacher  # noqa: E402


def random_ssl(folder: Path, layers: int, width: int = 256, pos_kernel: int = 128) -> str:
    """A random-weight wav2vec2-style model (Wav2Vec2Config's defaults but depth, width, CNN channels)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * width,
                         conv_dim=(width // 2,) * 7, num_conv_pos_embeddings=pos_kernel)
    Wav2Vec2Model(cfg).save_pretrained(folder / f"w2v2_{layers}x{width}")
    return str(folder / f"w2v2_{layers}x{width}")


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


def measure(model, label: str, granularity: str, n: int, batch_size: int = 128) -> dict:
    """One row: the forward pass alone (before and after, mean) and the analysis with it."""
    data = batches(n)
    before = time_forward(model, data)
    settings = SimilaritySettings(mode="minibatch", batch_size=batch_size, max_batches=10_000,
                                  granularity=granularity, crop_frames=49, knn_k=min(10, batch_size - 1))
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        _, counts = similarity_matrices(model, data, settings, progress=False)
        total = time.perf_counter() - t0
    forward = (before + time_forward(model, data)) / 2
    return {"model": label, "layers": model.num_layers, "granularity": granularity, "utterances": n,
            "forward_seconds": forward, "analysis_seconds_incl_forward": total, "ratio_to_forward": total / forward,
            "minibatch_samples": batch_size, "minibatches": counts["minibatches"], "peak_rss_growth_mb": mem.growth_mb}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_analysis.json")
    p.add_argument("--utterances", default="128,512", help="comma-separated numbers of 1 s utterances")
    p.add_argument("--granularities", default="utterance,crops", help="comma-separated granularities")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny random models, few utterances: a few seconds")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    tmp = out.parent / "bench_models"
    if args.smoke:
        models = {"random wav2vec2, 2 layers": random_ssl(tmp, 2, 32, 16),
                  "random wav2vec2, 3 layers": random_ssl(tmp, 3, 32, 16)}
        utterances, batch_size = [8, 16], 8
    else:
        models = {"whisper-tiny.en (4 layers)": "whisper-tiny.en",
                  "random wav2vec2, 12 layers": random_ssl(tmp, 12),
                  "random wav2vec2, 24 layers": random_ssl(tmp, 24)}
        utterances, batch_size = [int(x) for x in args.utterances.split(",")], 128
    record = BenchRecord(out, {"threads": args.threads, "smoke": args.smoke, "rows": []})
    for label, spec in models.items():
        model = record.part(f"load {label}", lambda: load_teacher(spec))
        if model is None:
            continue
        for granularity, n in itertools.product(args.granularities.split(","), utterances):
            row = record.part(f"{label}, {granularity}, {n} utterances", lambda: measure(model, label, granularity, n, batch_size))
            if row is None:
                continue
            record.result["rows"].append(row)
            record.save()
            print(f"{label:28s} {granularity:9s} {n:5d} utts  forward {row['forward_seconds']:6.2f}s  analysis "
                  f"{row['analysis_seconds_incl_forward']:6.2f}s  ratio {row['ratio_to_forward']:5.2f}  "
                  f"peak RSS growth {row['peak_rss_growth_mb']:7.1f} MB", flush=True)
    return record.exit_status("bench_analysis", f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
