#!/usr/bin/env python
"""Distillation throughput, online against cached teacher targets, measured in one run.

    .venv/bin/python scripts/bench_train.py --out runs/bench_train.json
    .venv/bin/python scripts/bench_train.py --smoke --out /tmp/bench_train.json   # about a minute, run by the tests

Per teacher (the offline default Whisper tiny.en, and a 12-layer, 768-wide random-weight HuBERT
of base size) and per student (mimic MLP, mimic transformer, DistilHuBERT-style): steady-state
seconds of audio trained per wall-clock second, online (the teacher runs on every batch) and
from the cache, and their ratio ``speedup``. Also per teacher: the cache's build time against
one online epoch, its size on disk, and the physical limit of the cached loop: reading the
float16 targets (page cache warm) and turning them into padded float32 batches, with nothing
trained. Then peak RSS of short training runs for two batch budgets, on short files and on
files of 40 s and 120 s: memory follows the budget, not the file length.

Every figure comes from the real training loop (``distill.training.distillation.distill``): steps are timed
from the ``elapsed`` / ``audio_seconds`` of its log rows, after warm-up steps; memory is the
``memory`` figure of the run's summary (resident set at the loop's start, peak since).

The JSON is rewritten after every part (a case, a cache build, a memory run): a part that fails
is named in its ``failed`` list with its error (a child process's own traceback), the others still
run, and the script exits non-zero. ``--smoke``: a tiny random HuBERT teacher, generated audio,
a few steps and short files: every part in about a minute, to check the script still runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"whisper-tiny.en": 5.0, "hubert-base-random": 10.0}  # required speedup of the mimic MLP (issue 8)


def _students(smoke: bool = False):
    from students.mimic import MimicOptions
    from students.registry import StudentSpec

    return {
        "mimic-mlp": StudentSpec(name="mimic-mlp", kind="mimic",
                                 sections={"mimic": MimicOptions(block_type="mlp", residual=True)}),
        "mimic-transformer": StudentSpec(name="mimic-transformer", kind="mimic",
                                         sections={"mimic": MimicOptions(block_type="transformer")}),
        "distilhubert": StudentSpec(name="distilhubert", kind="distilhubert"),
        # its pruning phase (the teacher-size gated student) is what costs: the row times that phase
        "structured": _structured_spec(smoke),
    }


def _structured_spec(smoke: bool):
    from students.registry import StudentSpec
    from students.structured import StructuredOptions

    # the smoke teacher is mostly frontend: a quarter of it is below what gates can reach
    options = StructuredOptions(final_steps=1, **({"target": 0.6} if smoke else {}))
    return StudentSpec(name="structured", kind="structured", sections={"structured": options})


def _smoke_teacher(folder: Path) -> str:
    """A tiny random-weight HuBERT (2 layers of 32): the smoke run's teacher."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=2)).save_pretrained(folder)
    return str(folder)


def _smoke_audio(folder: Path, files: int = 16) -> str:
    """Seeded noise files of 1 to 2.5 s (16 kHz): enough for the loop, no text-to-speech needed."""
    import torch

    from distill.data.audio import write_wav

    g = torch.Generator().manual_seed(0)
    for k in range(files):
        n = int(16000 * (1.0 + 1.5 * k / max(1, files - 1)))
        write_wav(folder / f"noise_{k:02d}.wav", 0.1 * torch.randn(n, generator=g))
    return str(folder)


def _base_hubert(folder: Path) -> str:
    """HuBERT Base's architecture (HubertConfig's defaults: 12 x 768, CNN 512 channels), random weights."""
    import torch
    from transformers import HubertConfig, HubertModel

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        HubertModel(HubertConfig()).save_pretrained(folder)
    return str(folder)


def _train_cfg(teacher: str, data: list[str], out: Path, spec, steps: int, batch_seconds: float, cache: bool,
               cache_root: Path):
    from distill.data.cache import CacheConfig
    from distill.training.distillation import DistillConfig, TrainConfig

    return DistillConfig(teacher=teacher, data=data, out=str(out), student=spec, cache=CacheConfig(root=str(cache_root)),
                         train=TrainConfig(max_steps=steps, warmup_steps=2, batch_seconds=batch_seconds,
                                           eval_every=10 ** 9, save_every=10 ** 9, log_every=1, max_valid=4,
                                           cache=cache))


def _steady_throughput(run: Path, warmup: int) -> dict:
    """Audio seconds per second between the end of step ``warmup`` and the last step, from the log rows."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train_loss" in r]
    first, last = rows[warmup - 1], rows[-1]
    seconds = last["elapsed"] - first["elapsed"]
    audio = last["audio_seconds"] - first["audio_seconds"]
    return {"audio_seconds_per_second": audio / seconds, "seconds_per_step": seconds / (last["step"] - first["step"]),
            "timed_steps": last["step"] - first["step"], "timed_audio_seconds": audio}


def _read_limit(cache, teacher, items, spec, batch_seconds: float, seconds: float = 5.0) -> float:
    """Audio seconds per second of only reading cached batches into float32 tensors (pages warm)."""
    from distill.data.audio import SAMPLE_RATE
    from distill.data.batches import BatchPlan, CachedSource
    from students.registry import build_student

    student = build_student(spec, teacher)
    source = CachedSource(cache, teacher, items, list(range(len(items))), [], BatchPlan(
        int(batch_seconds * SAMPLE_RATE), 64, 0), student.required_teacher_layers(), True, "cpu")
    for _ in source.train_batches(0):  # warm the page cache
        pass
    audio, t0, epoch = 0.0, time.perf_counter(), 1
    while time.perf_counter() - t0 < seconds:
        for batch in source.train_batches(epoch):
            audio += batch.audio_seconds
        epoch += 1
    return audio / (time.perf_counter() - t0)


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_teacher(record, name: str, teacher_spec: str, data: list[str], work: Path, steps: int, warmup: int,
                  batch_seconds: float, students: dict, read_seconds: float) -> None:
    """Every student online and cached under one teacher, and the cache's cost, into ``record``."""
    from distill.data.cache import CacheConfig
    from distill.data.corpus import list_audio
    from distill.models.teacher import load_teacher
    from distill.training.distillation import TrainConfig, cache_for_students, distill

    result = record.result
    teacher = load_teacher(teacher_spec)
    items, _ = list_audio(data)
    cache_root = work / f"cache-{name}"

    def build():
        t0 = time.time()
        made = cache_for_students(teacher, list(students.values()), data, TrainConfig(batch_seconds=batch_seconds),
                                  CacheConfig(root=str(cache_root)))
        return made, time.time() - t0

    cache, build_seconds = record.part(f"cache build ({name})", build) or (None, None)

    def throughput(spec, source):
        out = work / f"{name}-{spec.name}-{source}"
        try:
            distill(_train_cfg(teacher_spec, data, out, spec, warmup + steps, batch_seconds, source == "cached",
                               cache_root))
            return _steady_throughput(out / "prune" if spec.kind == "structured" else out, warmup)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    for sname, spec in students.items():
        row = {"teacher": name, "student": sname}
        result["cases"].append(row)
        for source in ("online", "cached"):
            row[source] = record.part(f"{source} training ({name} / {sname})", lambda: throughput(spec, source))
        if row["online"] and row["cached"]:
            row["speedup"] = row["cached"]["audio_seconds_per_second"] / row["online"]["audio_seconds_per_second"]
        if cache is not None:
            row["read_limit_audio_seconds_per_second"] = record.part(
                f"read limit ({name} / {sname})", lambda: _read_limit(cache, teacher, items, spec, batch_seconds,
                                                                      read_seconds))
            if row["cached"] and row["read_limit_audio_seconds_per_second"]:
                row["cached_of_read_limit_pct"] = 100 * row["cached"]["audio_seconds_per_second"] / \
                    row["read_limit_audio_seconds_per_second"]
        record.save()
        print(f"  {name} / {sname}: " + ", ".join(f"{label} {_fmt(row, k)}" for k, label in (
            ("online", "online"), ("cached", "cached"), ("speedup", "speedup"),
            ("read_limit_audio_seconds_per_second", "read limit"))), flush=True)
    mlp = next((c for c in result["cases"] if c["teacher"] == name and c["student"] == "mimic-mlp"), None)
    if cache is not None:
        audio = cache.manifest["audio_seconds"]
        row = {"teacher": name, "build_seconds": build_seconds, "bytes_on_disk": _du(cache.folder),
               "segments": cache.manifest["segments"], "audio_seconds": audio, "slots": cache.slots,
               "bytes_per_audio_second": _du(cache.folder) / audio}
        if mlp and mlp.get("online"):
            row["online_epoch_seconds_mimic_mlp"] = audio / mlp["online"]["audio_seconds_per_second"]
            row["build_over_online_epoch"] = build_seconds / row["online_epoch_seconds_mimic_mlp"]
        result["cache"].append(row)
        record.save()


def _fmt(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "failed"
    if isinstance(value, dict):
        value = value["audio_seconds_per_second"]
    return f"{value:.1f}x" if key == "speedup" else f"{value:.0f} s/s"


def _long_files(data: list[str], folder: Path, seconds: list[float]) -> str:
    """Files of the given lengths made by joining the corpus's utterances (16 kHz wav)."""
    import torch

    from distill.data.audio import load_audio, write_wav
    from distill.data.corpus import list_audio

    items, _ = list_audio(data)
    pool = [load_audio(i.path) for i in items[:200]]
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for n, length in enumerate(seconds):
        parts, total = [], 0
        while total < length * 16000:
            parts.append(pool[k % len(pool)])
            total += parts[-1].numel()
            k += 1
        write_wav(folder / f"long_{n:02d}_{int(length)}s.wav", torch.cat(parts)[: int(length * 16000)])
    return str(folder)


def _rss_child(args: dict) -> None:
    """Run one short distillation (the library's ``distill``, nothing replaced) and print its summary's
    memory: the resident set at the loop's start and the peak since (set-up excluded)."""
    from distill.training.distillation import distill

    spec = _students(args.get("smoke", False))["mimic-mlp"]
    summary = distill(_train_cfg(args["teacher"], args["data"], Path(args["out"]), spec, args["steps"],
                                 args["batch_seconds"], args["cache"], Path(args["cache_root"])))
    memory = summary["memory"]
    print(json.dumps({"rss_after_setup_mb": memory["rss_at_start_mb"], "peak_rss_mb": memory["peak_rss_mb"],
                      "peak_since": memory["peak_since"]}))


def bench_rss(record, teacher: str, data: list[str], work: Path, budgets: list[float], steps: int,
              long_seconds: list[float], smoke: bool) -> None:
    """Peak memory of short runs, each in a fresh process, per batch budget, on short and on long files."""
    label = "+".join(f"{s:g}" for s in sorted(set(long_seconds)))
    corpora = {"short files (corpus)": data,
               f"long files ({label} s)": [_long_files(data, work / "long", long_seconds)]}
    rows = record.result["rss"]
    for files, d in corpora.items():
        for budget in budgets:
            for cache in (False, True):
                source = "cached" if cache else "online"
                args = {"teacher": teacher, "data": d, "out": str(work / "rss-run"), "steps": steps,
                        "batch_seconds": budget, "cache": cache, "cache_root": str(work / "rss-cache"), "smoke": smoke}
                m = record.part(f"peak RSS ({files}, budget {budget:g} s, {source})", lambda: _rss_run(args))
                shutil.rmtree(work / "rss-run", ignore_errors=True)
                if m is None:
                    continue
                growth = m["peak_rss_mb"] - m["rss_after_setup_mb"]
                rows.append({"files": files, "batch_seconds": budget, "source": source, **m,
                             "growth_in_training_mb": growth})
                record.save()
                print(f"  RSS {files}, budget {budget:g} s, {source}: peak {m['peak_rss_mb']:.0f}"
                      f" MB, {growth:+.0f} MB over set-up", flush=True)


def _rss_run(args: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--rss-child", json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:  # the child's own error, not only its exit status
        raise RuntimeError(f"the child process exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _markdown(result: dict) -> str:
    value = lambda v, fmt: "failed" if v is None else format(v, fmt)  # noqa: E731
    lines = ["| teacher | student | online s/s | cached s/s | speedup | read limit s/s | cached of limit |",
             "|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        rate = lambda k: value((c.get(k) or {}).get("audio_seconds_per_second"), ".0f")  # noqa: E731
        limit = value(c.get("read_limit_audio_seconds_per_second"), ".0f")
        lines.append(f"| {c['teacher']} | {c['student']} | {rate('online')} | {rate('cached')} | "
                     f"{value(c.get('speedup'), '.1f')}x | {limit} | {value(c.get('cached_of_read_limit_pct'), '.0f')} % |")
    lines += ["", "| teacher | cache build s | one online epoch s (mimic MLP) | ratio | size on disk | per audio second |",
              "|---|---|---|---|---|---|"]
    for c in result["cache"]:
        epoch = value(c.get("online_epoch_seconds_mimic_mlp"), ".1f")
        lines.append(f"| {c['teacher']} | {c['build_seconds']:.1f} | {epoch} | {value(c.get('build_over_online_epoch'), '.2f')} | {c['bytes_on_disk'] / 1e6:.0f} MB | "
                     f"{c['bytes_per_audio_second'] / 1e3:.0f} kB |")
    lines += ["", "| files | batch budget | online: peak RSS (growth in training) | cached: peak RSS (growth) |",
              "|---|---|---|---|"]
    keyed = {(r["files"], r["batch_seconds"], r["source"]): r for r in result["rss"]}
    cell = lambda r: "failed" if r is None else f"{r['peak_rss_mb']:.0f} MB ({r['growth_in_training_mb']:+.0f} MB)"  # noqa: E731
    for files, budget in dict.fromkeys((r["files"], r["batch_seconds"]) for r in result["rss"]):
        lines.append(f"| {files} | {budget:g} s | {cell(keyed.get((files, budget, 'online')))} | "
                     f"{cell(keyed.get((files, budget, 'cached')))} |")
    if result["failed"]:
        lines += ["", "Failed: " + "; ".join(f"{f['part']}" for f in result["failed"])]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_train.json")
    p.add_argument("--data", nargs="*", help="training audio (default: the pipeline's synthetic sentences)")
    p.add_argument("--max_files", type=int, default=240, help="files of the data used (a seeded subset)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch_seconds", type=float, default=20.0)
    p.add_argument("--rss_budgets", type=float, nargs="+", default=[10.0, 40.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip_base", action="store_true", help="only the offline default teacher")
    p.add_argument("--smoke", action="store_true",
                   help="every part on a tiny random teacher and generated audio, a few steps (about a minute)")
    p.add_argument("--rss-child", dest="rss_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        _rss_child(json.loads(args.rss_child))
        return 0

    from distill.core.bench_record import BenchRecord

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    if args.smoke:
        data = args.data or [_smoke_audio(work / "audio")]
        teachers = {"tiny-random-hubert": _smoke_teacher(work / "teacher")}
        steps, warmup, batch_seconds, read_seconds = 2, 1, 4.0, 0.3
        budgets, rss_steps, long_seconds = [4.0], 3, [6.0, 12.0]
    else:
        from tasks.corpora.synthetic import SentencesConfig, build_sentences

        data = args.data or [str(build_sentences(SentencesConfig(speakers=40, utterances_per_speaker=12)))]
        teachers = {"whisper-tiny.en": "whisper-tiny.en"}
        if not args.skip_base:
            teachers["hubert-base-random"] = _base_hubert(work / "hubert-base")
        steps, warmup, batch_seconds, read_seconds = args.steps, args.warmup, args.batch_seconds, 5.0
        budgets, rss_steps, long_seconds = args.rss_budgets, 15, [40, 40, 120, 120, 40, 120]
    subset = work / "subset.tsv"
    _subset_manifest(data, subset, args.max_files)
    data = [str(subset)]
    out = Path(args.out)
    record = BenchRecord(out, {
        "date": date.today().isoformat(), "smoke": args.smoke, "threads": args.threads, "batch_seconds": batch_seconds,
        "data": {"sources": args.data or ("generated noise" if args.smoke else "synthetic sentences"),
                 "files": args.max_files},
        "teachers": teachers, "steps_timed": steps, "warmup_steps": warmup, "cases": [], "cache": [], "rss": []})
    result = record.result
    t0 = time.time()
    students = _students(args.smoke)
    for name, spec in teachers.items():
        print(f"[bench_train] teacher {name}", flush=True)
        record.part(f"teacher {name}", lambda: bench_teacher(record, name, spec, data, work, steps, warmup,
                                                             batch_seconds, students, read_seconds))
    print("[bench_train] peak RSS", flush=True)
    record.part("peak RSS", lambda: bench_rss(record, next(iter(teachers.values())), data, work, budgets, rss_steps,
                                              long_seconds, args.smoke))
    by_budget = {}
    for r in result["rss"]:
        by_budget.setdefault((r["batch_seconds"], r["source"]), []).append(r["growth_in_training_mb"])
    result["rss_growth_spread_over_file_lengths_mb"] = {f"{b:g}s-{s}": max(v) - min(v) for (b, s), v in by_budget.items()}
    result["targets"] = {}
    for name, need in TARGETS.items():
        mlp = next((c for c in result["cases"] if c["teacher"] == name and c["student"] == "mimic-mlp"), None)
        if mlp is not None:
            speedup = mlp.get("speedup")
            result["targets"][name] = {"required_speedup": need, "speedup": speedup,
                                       "met": None if speedup is None else speedup >= need}
    speedups = [c["speedup"] for c in result["cases"] if c.get("speedup") is not None]
    result["median_speedup"] = statistics.median(speedups) if speedups else None
    result["seconds"] = time.time() - t0
    print(_markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    return record.exit_status("bench_train", f"wrote {out} ({result['seconds'] / 60:.1f} min)")


def _subset_manifest(data: list[str], path: Path, n: int) -> None:
    """A fairseq manifest of a seeded subset of ``data`` (absolute paths)."""
    import random

    from distill.data.corpus import list_audio

    items, _ = list_audio(data)
    if n and len(items) > n:
        items = sorted(random.Random(0).sample(items, n), key=lambda i: i.path)
    path.write_text("/\n" + "".join(f"{Path(i.path).resolve().relative_to('/')}\t{i.num_samples}\n" for i in items))


if __name__ == "__main__":
    sys.exit(main())
