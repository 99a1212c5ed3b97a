"""``stackdistill bench MODEL [MODEL ...]``: what each model costs to run, all measured in one run.

Per model: parameters (frontend / stack / heads), multiply-accumulates per second of audio at
each clip length (torch's FlopCounterMode), the wall time of CPU inference per second of audio
(median of timed rounds after warm-up, on ``threads`` threads, models interleaved round by round
so a noisy neighbour slows all alike) at each clip length and batch size, the real-time factor
(a batch's wall time over one clip's duration), and how far the resident set rises during a
forward pass (the kernel's high-water mark, each model in a fresh process by default). The
frontend alone of the first model is measured too: the floor any stack-replacing student that
keeps the teacher's frontend is bounded by. Audio: real recorded speech (Debian's
pocketsphinx-testdata) tiled to each length, else seeded noise. ``bench.json`` + ``bench.md``.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from distill.core.bench_record import BenchRecord
from distill.core.fsutil import claim_run_folder, write_text_atomic
from distill.core.memory import PeakSince
from distill.data.audio import SAMPLE_RATE, real_speech_batch
from distill.deploy.bench import macs_per_audio_second, median_wall_seconds, model_names

log = logging.getLogger(__name__)

@dataclass
class BenchCommandConfig:
    models: list[str] = field(default_factory=lambda: ["whisper-tiny.en"],
                              metadata={"help": "model specs: teacher, student or pruned folders, hub ids"})
    out: str = field(default="runs/bench", metadata={"help": "output folder (bench.json, bench.md)"})
    overwrite: bool = field(default=False, metadata={"help": "write over an earlier bench in out (else refused)"})
    seconds: list[float] = field(default_factory=lambda: [1.0, 5.0, 20.0], metadata={"help": "clip lengths"})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    rounds: int = field(default=5, metadata={"help": "timed rounds per setting (median kept)"})
    warmup: int = 1
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    frontend: bool = field(default=True, metadata={"help": "also time the first model's frontend alone"})
    memory_subprocess: bool = field(default=True, metadata={
        "help": "peak memory of each model in a fresh process (false: in this one, cheaper, less exact)"})
    smoke: bool = field(default=False, metadata={
        "help": "a few seconds' check that every part runs: 1 s clips, batch 1, one round, no warm-up"})

    def resolved(self) -> "BenchCommandConfig":
        """The settings actually measured (``smoke`` shrinks them)."""
        if not self.smoke:
            return self
        return replace(self, seconds=[1.0], batch_sizes=[1], rounds=1, warmup=0)


def speech(seconds: float, batch: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(batch, samples)`` of real speech, ``seconds`` long each (seeded noise if none is installed)."""
    return real_speech_batch([seconds] * batch, fallback=True)


@torch.no_grad()
def peak_rss_mb(model, settings: list[tuple[float, int]]) -> dict[str, float]:
    """``{"<s>s_x<batch>": MB}``: how far the resident set rises above its level before each forward.

    Settings run smallest first and the kernel's high-water mark is reset before each
    (:class:`distill.core.memory.PeakSince`), so a setting is not hidden by an earlier, larger one.
    """
    out = {}
    for seconds, batch in sorted(settings, key=lambda sb: sb[0] * sb[1]):
        wav, lengths, _ = speech(seconds, batch)
        since = PeakSince.start()
        model(wav, lengths)
        out[f"{seconds:g}s_x{batch}"] = max(0.0, since.summary()["growth_mb"] or 0.0)
    return out


def _peak_rss_child(spec: str, frontend_only: bool, settings, queue) -> None:
    try:
        from distill.models.teacher import load_teacher

        torch.set_num_threads(1)
        model = load_teacher(spec).eval()
        fn = model.frontend if frontend_only else model
        fn(*speech(1.0, 1)[:2])  # warm-up: lazy buffers, allocator pools
        queue.put(("ok", peak_rss_mb(fn, settings)))
    except BaseException:  # the parent shows the child's own error
        queue.put(("error", traceback.format_exc()))


def peak_rss_in_fresh_process(spec: str, settings, frontend_only: bool = False,
                              timeout: float = 1800.0) -> dict[str, float]:
    """:func:`peak_rss_mb` in a new process that holds only this model (nothing left by the others).

    A child that fails raises here with its own traceback; one that dies without a word (killed,
    out of memory) raises with its exit code, at once, not after ``timeout``.
    """
    import multiprocessing as mp
    import queue as queues

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_child, args=(spec, frontend_only, settings, queue))
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                status, value = queue.get(timeout=1.0)
                break
            except queues.Empty:
                if not proc.is_alive():
                    try:  # it may have sent its result just before exiting
                        status, value = queue.get(timeout=2.0)
                        break
                    except queues.Empty:
                        pass
                    raise RuntimeError(f"peak-memory process for {spec} died with exit code {proc.exitcode} "
                                       "and no result (killed? out of memory?)") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"peak-memory process for {spec} gave no result in {timeout:.0f} s") from None
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise RuntimeError(f"peak-memory process for {spec} failed:\n{value}")
    return value


def param_split(model) -> dict:
    info = model.info
    head = getattr(model, "head", None)
    heads = sum(p.numel() for p in head.parameters()) if isinstance(head, torch.nn.Module) else 0
    return {"frontend": info.params_frontend, "stack": info.params_stack, "heads": heads,
            "total": info.params_total + heads}


@torch.no_grad()
def run_bench(cfg: BenchCommandConfig) -> dict:
    """Measure every model (see the module docstring); ``bench.json`` is rewritten after each part,
    so a part that fails leaves the others measured and is named in it (then this raises
    :class:`distill.core.bench_record.BenchmarkIncomplete`)."""
    from distill.models.teacher import load_teacher

    if not cfg.models:
        raise ValueError("bench needs at least one model")
    claim_run_folder(cfg.out, overwrite=cfg.overwrite)
    cfg = cfg.resolved()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    names = model_names(cfg.models)
    models = {name: load_teacher(spec).eval() for name, spec in zip(names, cfg.models)}
    first_name = names[0]
    first = models[first_name]
    callables = dict(models)
    frontend_key = None
    if cfg.frontend and first.frontend is not None:
        frontend_key = "frontend" if "frontend" not in models else f"frontend of {first_name}"
        callables[frontend_key] = first.frontend
    specs = dict(zip(names, cfg.models))
    settings = [(s, b) for s in cfg.seconds for b in cfg.batch_sizes]
    _, _, audio_kind = speech(1.0, 1)
    record = BenchRecord(out / "bench.json", {
        "models": {}, "threads": cfg.threads, "rounds": cfg.rounds, "warmup": cfg.warmup, "audio": audio_kind,
        "smoke": cfg.smoke, "settings": [f"{s:g}s_x{b}" for s, b in settings],
        "frontend_of": first_name if frontend_key else None, "frontend_key": frontend_key,
        "memory": "fresh process per model" if cfg.memory_subprocess else "in process"})
    result = record.result
    for name in callables:
        m = models.get(name, first)
        params = param_split(m) if name in models else {"frontend": m.info.params_frontend, "stack": 0, "heads": 0,
                                                        "total": m.info.params_frontend}
        result["models"][name] = {"spec": specs.get(name, f"{specs[first_name]} (frontend)"), "params": params,
                                  "macs_per_audio_second": {}, "wall_seconds": {}, "seconds_per_audio_second": {},
                                  "real_time_factor": {}, "peak_rss_mb": {}}
    try:
        for seconds in cfg.seconds:
            for name in callables:
                record.part(f"MACs of {name} at {seconds:g} s", lambda name=name, seconds=seconds: _count_macs(
                    result, name, models.get(name, first), seconds, frontend_only=name not in models))
            for batch in cfg.batch_sizes:
                record.part(f"timing at {seconds:g} s x {batch}",
                            lambda seconds=seconds, batch=batch: _time_models(result, callables, seconds, batch, cfg))
        for name, fn in callables.items():
            record.part(f"peak memory of {name}", lambda name=name, fn=fn: _measure_memory(
                result, name, fn, specs[first_name] if name == frontend_key else specs[name], name == frontend_key,
                settings, cfg))
    finally:
        torch.set_num_threads(threads_before)
        if result["models"]:
            write_text_atomic(out / "bench.md", render_bench(result))
    return record.finish()


def _count_macs(result: dict, name: str, model, seconds: float, frontend_only: bool) -> None:
    result["models"][name]["macs_per_audio_second"][f"{seconds:g}s"] = \
        macs_per_audio_second(model, seconds, frontend_only=frontend_only)


def _time_models(result: dict, callables: dict, seconds: float, batch: int, cfg: BenchCommandConfig) -> None:
    wav, lengths, _ = speech(seconds, batch)
    audio = float(lengths.sum()) / SAMPLE_RATE
    wall = median_wall_seconds(callables, wav, lengths, rounds=cfg.rounds, warmup=cfg.warmup)
    key = f"{seconds:g}s_x{batch}"
    for name in callables:
        entry = result["models"][name]
        entry["wall_seconds"][key] = wall[name]  # the measured median of one batch
        entry["seconds_per_audio_second"][key] = wall[name] / audio
        # the batch's clips are processed together: RTF = wall time of the batch / one clip's duration
        entry["real_time_factor"][key] = wall[name] / seconds
    log.info("bench %s: %s", key, {n: f"{wall[n] / audio:.4f}" for n in callables})


def _measure_memory(result: dict, name: str, fn, spec: str, frontend_only: bool, settings, cfg) -> None:
    peaks = peak_rss_in_fresh_process(spec, settings, frontend_only) if cfg.memory_subprocess \
        else peak_rss_mb(fn, settings)
    result["models"][name]["peak_rss_mb"] = {f"{s:g}s_x{b}": peaks[f"{s:g}s_x{b}"] for s, b in settings}


def render_bench(result: dict) -> str:
    models = result["models"]
    keys = result.get("settings") or list(next(iter(models.values()))["seconds_per_audio_second"])
    lines = [f"Wall seconds of CPU inference per second of audio (median of {result['rounds']} rounds, "
             f"{result['threads']} threads, models interleaved), and in brackets the peak RSS rise of the forward in MB "
             f"({result['memory']}); audio: {result['audio']}", "",
             "| model | params (frontend / stack / heads) | GMACs / s (" +
             ", ".join(next(iter(models.values()))["macs_per_audio_second"]) + ") | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---:|" * len(keys)]
    for name, m in models.items():
        p = m["params"]
        macs = ", ".join(f"{v / 1e9:.2f}" for v in m["macs_per_audio_second"].values())
        cells = " | ".join(f"{_num(m['seconds_per_audio_second'].get(k), '.4f')} "
                           f"({_num(m['peak_rss_mb'].get(k), '.0f')} MB)" for k in keys)
        lines.append(f"| {name} | {p['frontend']:,} / {p['stack']:,} / {p['heads']:,} | {macs} | {cells} |")
    lines += ["", "Real-time factor (wall time of a batch / the duration of one of its clips; < 1 is faster than "
              "real time):", "", "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_num(m["real_time_factor"].get(k), ".4f") for k in keys) + " |")
    if result.get("failed"):
        lines += ["", "Failed (not measured): " + "; ".join(f"{f['part']} ({f['error']})" for f in result["failed"])]
    if result.get("frontend_of"):
        lines += ["", f"`{result['frontend_key']}` is {result['frontend_of']}'s frontend alone: the floor of any "
                  "student that keeps it."]
    return "\n".join(lines) + "\n"


def _num(value, fmt: str) -> str:
    return "failed" if value is None else format(value, fmt)
