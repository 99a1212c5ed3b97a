"""``stackdistill bench MODEL [MODEL ...]``: what each model costs to run, all measured in one run.

Per model: parameters (frontend / stack / heads), multiply-accumulates per second of audio at
each clip length, CPU seconds per second of audio (median of timed rounds after warm-up, models
interleaved round by round so a noisy neighbour slows all alike) at each clip length and batch
size, the real-time factor, and the peak resident-memory growth during a forward pass. The
frontend alone of the first model is measured too: the floor any stack-replacing student that
keeps the teacher's frontend is bounded by. Audio: real recorded speech (Debian's
pocketsphinx-testdata) tiled to each length, else seeded noise. ``bench.json`` + ``bench.md``.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .audio import SAMPLE_RATE, load_audio
from .bench import macs_per_audio_second
from .fsutil import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

REAL_SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")


@dataclass
class BenchCommandConfig:
    models: list[str] = field(default_factory=lambda: ["whisper-tiny.en"],
                              metadata={"help": "model specs: teacher, student or pruned folders, hub ids"})
    out: str = field(default="runs/bench", metadata={"help": "output folder (bench.json, bench.md)"})
    seconds: list[float] = field(default_factory=lambda: [1.0, 5.0, 20.0], metadata={"help": "clip lengths"})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    rounds: int = field(default=5, metadata={"help": "timed rounds per setting (median kept)"})
    warmup: int = 1
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    frontend: bool = field(default=True, metadata={"help": "also time the first model's frontend alone"})


def speech(seconds: float, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, samples)`` of real speech tiled to ``seconds`` (noise if none is installed)."""
    n = int(seconds * SAMPLE_RATE)
    clips = sorted(REAL_SPEECH.glob("*.wav")) if REAL_SPEECH.is_dir() else []
    if clips:
        source = torch.cat([load_audio(p) for p in clips])
    else:
        log.warning("no recorded speech at %s (Debian pocketsphinx-testdata): timing on noise", REAL_SPEECH)
        source = torch.randn(n * batch, generator=torch.Generator().manual_seed(0)) * 0.1
    reps = (n * batch) // source.numel() + 1
    tiled = source.repeat(reps)
    wav = torch.stack([tiled[i * n:(i + 1) * n] for i in range(batch)])
    return wav, torch.full((batch,), n)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def peak_rss_growth(fn, *args) -> int:
    """Bytes the resident set grows by, at its peak, while ``fn(*args)`` runs (sampled every ms)."""
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn(*args)
    finally:
        stop.set()
        t.join()
    return max(0, max(peak[0], _rss_bytes()) - base)


def param_split(model) -> dict:
    info = model.info
    head = getattr(model, "head", None)
    heads = sum(p.numel() for p in head.parameters()) if isinstance(head, torch.nn.Module) else 0
    return {"frontend": info.params_frontend, "stack": info.params_stack, "heads": heads,
            "total": info.params_total + heads}


@torch.no_grad()
def run_bench(cfg: BenchCommandConfig) -> dict:
    from .teacher import load_teacher

    if not cfg.models:
        raise ValueError("bench needs at least one model")
    torch.set_num_threads(cfg.threads)
    models = {}
    for spec in cfg.models:
        model = load_teacher(spec)
        model.eval()
        models[Path(spec).name if Path(spec).exists() else spec] = model
    first = next(iter(models.values()))
    callables = {name: m for name, m in models.items()}
    if cfg.frontend and first.frontend is not None:
        callables["frontend"] = first.frontend
    result = {"models": {}, "threads": cfg.threads, "rounds": cfg.rounds, "warmup": cfg.warmup,
              "audio": str(REAL_SPEECH), "frontend_of": next(iter(models)) if "frontend" in callables else None}
    for name in callables:
        m = models.get(name, first)
        result["models"][name] = {"params": param_split(m) if name in models else
                                  {"frontend": m.info.params_frontend, "stack": 0, "heads": 0,
                                   "total": m.info.params_frontend},
                                  "macs_per_audio_second": {}, "seconds_per_audio_second": {},
                                  "real_time_factor": {}, "peak_rss_mb": {}}
    for seconds in cfg.seconds:
        for name in callables:
            m = models.get(name, first)
            result["models"][name]["macs_per_audio_second"][f"{seconds:g}s"] = \
                macs_per_audio_second(m, seconds, frontend_only=name not in models)
        for batch in cfg.batch_sizes:
            wav, lengths = speech(seconds, batch)
            audio = float(lengths.sum()) / SAMPLE_RATE
            times = {name: [] for name in callables}
            for r in range(cfg.warmup + cfg.rounds):
                for name, fn in callables.items():
                    t0 = time.perf_counter()
                    fn(wav, lengths)
                    if r >= cfg.warmup:
                        times[name].append(time.perf_counter() - t0)
            key = f"{seconds:g}s_x{batch}"
            for name, fn in callables.items():
                per_second = statistics.median(times[name]) / audio
                entry = result["models"][name]
                entry["seconds_per_audio_second"][key] = per_second
                entry["real_time_factor"][key] = per_second  # CPU seconds per audio second, batch in parallel
                entry["peak_rss_mb"][key] = peak_rss_growth(fn, wav, lengths) / 2 ** 20
            log.info("bench %s: %s", key, {n: f"{result['models'][n]['seconds_per_audio_second'][key]:.4f}"
                                           for n in callables})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench.json", result)
    write_text_atomic(out / "bench.md", render_bench(result))
    return result


def render_bench(result: dict) -> str:
    models = result["models"]
    keys = list(next(iter(models.values()))["seconds_per_audio_second"])
    lines = [f"CPU seconds per second of audio (median of {result['rounds']} rounds, {result['threads']} threads; "
             "real-time factor = the same figure), peak RSS growth in MB", "",
             "| model | params (frontend / stack / heads) | GMACs / s (" +
             ", ".join(next(iter(models.values()))["macs_per_audio_second"]) + ") | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---:|" * len(keys)]
    for name, m in models.items():
        p = m["params"]
        macs = ", ".join(f"{v / 1e9:.2f}" for v in m["macs_per_audio_second"].values())
        cells = " | ".join(f"{m['seconds_per_audio_second'][k]:.4f} ({m['peak_rss_mb'][k]:.0f} MB)" for k in keys)
        lines.append(f"| {name} | {p['frontend']:,} / {p['stack']:,} / {p['heads']:,} | {macs} | {cells} |")
    if result.get("frontend_of"):
        lines += ["", f"`frontend` is {result['frontend_of']}'s frontend alone: the floor of any student that keeps it."]
    return "\n".join(lines) + "\n"
