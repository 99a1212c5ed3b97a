#!/usr/bin/env python
"""Distillation throughput, online against cached teacher targets, measured in one run.

    .venv/bin/python scripts/bench_train.py --out runs/bench_train.json

Per teacher (the offline default Whisper tiny.en, and a 12-layer, 768-wide random-weight HuBERT
of base size) and per student (mimic MLP, mimic transformer, DistilHuBERT-style): steady-state
seconds of audio trained per wall-clock second, online (the teacher runs on every batch) and
from the cache, and their ratio ``speedup``. Also per teacher: the cache's build time against
one online epoch, its size on disk, and the physical limit of the cached loop: reading the
float16 targets (page cache warm) and turning them into padded float32 batches, with nothing
trained. Then peak RSS of short training runs for two batch budgets, on short files and on
files of 40 s and 120 s: memory follows the budget, not the file length.

Every figure comes from the real training loop (``distill.training.distillation.distill``): steps are timed
from the ``elapsed`` / ``audio_seconds`` of its log rows, after warm-up steps.
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


def _students():
    from students.mimic import MimicOptions
    from students.registry import StudentSpec

    return {
        "mimic-mlp": StudentSpec(name="mimic-mlp", kind="mimic",
                                 sections={"mimic": MimicOptions(block_type="mlp", residual=True)}),
        "mimic-transformer": StudentSpec(name="mimic-transformer", kind="mimic",
                                         sections={"mimic": MimicOptions(block_type="transformer")}),
        "distilhubert": StudentSpec(name="distilhubert", kind="distilhubert"),
        # its pruning phase (the teacher-size gated student) is what costs: the row times that phase
        "structured": _structured_spec(),
    }


def _structured_spec():
    from students.registry import StudentSpec
    from students.structured import StructuredOptions

    return StudentSpec(name="structured", kind="structured", sections={"structured": StructuredOptions(final_steps=1)})


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


def bench_teacher(name: str, teacher_spec: str, data: list[str], work: Path, steps: int, warmup: int,
                  batch_seconds: float) -> dict:
    from distill.data.cache import CacheConfig
    from distill.data.corpus import list_audio
    from distill.models.teacher import load_teacher
    from distill.training.distillation import TrainConfig, cache_for_students, distill

    students = _students()
    teacher = load_teacher(teacher_spec)
    items, _ = list_audio(data)
    cache_root = work / f"cache-{name}"
    t0 = time.time()
    cache = cache_for_students(teacher, list(students.values()), data, TrainConfig(batch_seconds=batch_seconds),
                               CacheConfig(root=str(cache_root)))
    build_seconds = time.time() - t0
    cases = []
    for sname, spec in students.items():
        row = {"teacher": name, "student": sname}
        for source in ("online", "cached"):
            out = work / f"{name}-{sname}-{source}"
            distill(_train_cfg(teacher_spec, data, out, spec, warmup + steps, batch_seconds, source == "cached",
                               cache_root))
            row[source] = _steady_throughput(out / "prune" if spec.kind == "structured" else out, warmup)
            shutil.rmtree(out)
        row["speedup"] = row["cached"]["audio_seconds_per_second"] / row["online"]["audio_seconds_per_second"]
        row["read_limit_audio_seconds_per_second"] = _read_limit(cache, teacher, items, spec, batch_seconds)
        row["cached_of_read_limit_pct"] = 100 * row["cached"]["audio_seconds_per_second"] / \
            row["read_limit_audio_seconds_per_second"]
        print(f"  {name} / {sname}: online {row['online']['audio_seconds_per_second']:.0f}, cached "
              f"{row['cached']['audio_seconds_per_second']:.0f} s/s, speedup {row['speedup']:.1f}x, read limit "
              f"{row['read_limit_audio_seconds_per_second']:.0f} s/s", flush=True)
        cases.append(row)
    audio = cache.manifest["audio_seconds"]
    mlp_online = next(c for c in cases if c["student"] == "mimic-mlp")["online"]["audio_seconds_per_second"]
    epoch_seconds = audio / mlp_online
    return {"cases": cases, "cache": {
        "teacher": name, "build_seconds": build_seconds, "online_epoch_seconds_mimic_mlp": epoch_seconds,
        "build_over_online_epoch": build_seconds / epoch_seconds, "bytes_on_disk": _du(cache.folder),
        "segments": cache.manifest["segments"], "audio_seconds": audio, "slots": cache.slots,
        "bytes_per_audio_second": _du(cache.folder) / audio}}


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


def _status_mb(key: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) / 1024


def _rss_child(args: dict) -> None:
    """Run one short distillation; print resident memory after set-up and its peak during the loop.

    The peak (VmHWM) is reset once set-up is done (Linux ``clear_refs``), so imports and loading
    the teacher do not mask what the batches themselves cost.
    """
    import gc

    from distill.training.distillation import setup
    from distill.training.loop import train_loop

    spec = _students()["mimic-mlp"]
    # the library's own two steps (what distill() does): set-up, then the loop; nothing replaced
    run = setup(_train_cfg(args["teacher"], args["data"], Path(args["out"]), spec, args["steps"],
                           args["batch_seconds"], args["cache"], Path(args["cache_root"])))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    after_setup = _status_mb("VmRSS")
    train_loop(run)
    print(json.dumps({"rss_after_setup_mb": after_setup, "peak_rss_mb": _status_mb("VmHWM")}))


def bench_rss(data: list[str], work: Path, budgets: list[float], steps: int) -> list[dict]:
    corpora = {"short files (corpus)": data,
               "40 s and 120 s files": [_long_files(data, work / "long", [40, 40, 120, 120, 40, 120])]}
    rows = []
    for files, d in corpora.items():
        for budget in budgets:
            for cache in (False, True):
                args = {"teacher": "whisper-tiny.en", "data": d, "out": str(work / "rss-run"), "steps": steps,
                        "batch_seconds": budget, "cache": cache, "cache_root": str(work / "rss-cache")}
                proc = subprocess.run([sys.executable, __file__, "--rss-child", json.dumps(args)], capture_output=True,
                                      text=True)
                if proc.returncode != 0:  # the child's own error, not only its exit status
                    raise RuntimeError(f"peak-RSS run ({files}, budget {budget:g} s, cache {cache}) failed:\n"
                                       f"{proc.stderr[-3000:]}")
                m = json.loads(proc.stdout.strip().splitlines()[-1])
                growth = m["peak_rss_mb"] - m["rss_after_setup_mb"]
                rows.append({"files": files, "batch_seconds": budget, "source": "cached" if cache else "online",
                             **m, "growth_in_training_mb": growth})
                print(f"  RSS {files}, budget {budget:g} s, {'cached' if cache else 'online'}: peak {m['peak_rss_mb']:.0f}"
                      f" MB, {growth:+.0f} MB over set-up", flush=True)
                shutil.rmtree(work / "rss-run", ignore_errors=True)
    return rows


def _markdown(result: dict) -> str:
    lines = ["| teacher | student | online s/s | cached s/s | speedup | read limit s/s | cached of limit |",
             "|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        lines.append(f"| {c['teacher']} | {c['student']} | {c['online']['audio_seconds_per_second']:.0f} | "
                     f"{c['cached']['audio_seconds_per_second']:.0f} | {c['speedup']:.1f}x | "
                     f"{c['read_limit_audio_seconds_per_second']:.0f} | {c['cached_of_read_limit_pct']:.0f} % |")
    lines += ["", "| teacher | cache build s | one online epoch s (mimic MLP) | ratio | size on disk | per audio second |",
              "|---|---|---|---|---|---|"]
    for c in result["cache"]:
        lines.append(f"| {c['teacher']} | {c['build_seconds']:.1f} | {c['online_epoch_seconds_mimic_mlp']:.1f} | "
                     f"{c['build_over_online_epoch']:.2f} | {c['bytes_on_disk'] / 1e6:.0f} MB | "
                     f"{c['bytes_per_audio_second'] / 1e3:.0f} kB |")
    lines += ["", "| files | batch budget | online: peak RSS (growth in training) | cached: peak RSS (growth) |",
              "|---|---|---|---|"]
    keyed = {(r["files"], r["batch_seconds"], r["source"]): r for r in result["rss"]}
    cell = lambda r: f"{r['peak_rss_mb']:.0f} MB ({r['growth_in_training_mb']:+.0f} MB)"
    for files, budget in dict.fromkeys((r["files"], r["batch_seconds"]) for r in result["rss"]):
        lines.append(f"| {files} | {budget:g} s | {cell(keyed[(files, budget, 'online')])} | "
                     f"{cell(keyed[(files, budget, 'cached')])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_train.json")
    p.add_argument("--data", nargs="*", help="training audio (default: the pipeline's synthetic sentences)")
    p.add_argument("--max_files", type=int, default=240, help="files of the data used (a seeded subset)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch_seconds", type=float, default=20.0)
    p.add_argument("--rss_budgets", type=float, nargs=2, default=[10.0, 40.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip_base", action="store_true", help="only the offline default teacher")
    p.add_argument("--rss-child", dest="rss_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        _rss_child(json.loads(args.rss_child))
        return

    from tasks.corpora.synthetic import SentencesConfig, build_sentences

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    data = args.data or [str(build_sentences(SentencesConfig(speakers=40, utterances_per_speaker=12)))]
    subset = work / "subset.tsv"
    _subset_manifest(data, subset, args.max_files)
    data = [str(subset)]
    teachers = {"whisper-tiny.en": "whisper-tiny.en"}
    if not args.skip_base:
        teachers["hubert-base-random"] = _base_hubert(work / "hubert-base")
    result = {"date": date.today().isoformat(), "threads": args.threads, "batch_seconds": args.batch_seconds,
              "data": {"sources": args.data or "synthetic sentences", "files": args.max_files},
              "steps_timed": args.steps, "warmup_steps": args.warmup, "cases": [], "cache": []}
    t0 = time.time()
    for name, spec in teachers.items():
        print(f"[bench_train] teacher {name}", flush=True)
        r = bench_teacher(name, spec, data, work, args.steps, args.warmup, args.batch_seconds)
        result["cases"] += r["cases"]
        result["cache"].append(r["cache"])
    print("[bench_train] peak RSS", flush=True)
    result["rss"] = bench_rss(data, work, args.rss_budgets, 15)
    by_budget = {}
    for r in result["rss"]:
        by_budget.setdefault((r["batch_seconds"], r["source"]), []).append(r["growth_in_training_mb"])
    result["rss_growth_spread_over_file_lengths_mb"] = {f"{b:g}s-{s}": max(v) - min(v) for (b, s), v in by_budget.items()}
    result["targets"] = {name: {"required_speedup": need, "speedup": next(
        c["speedup"] for c in result["cases"] if c["teacher"] == name and c["student"] == "mimic-mlp"),
        "met": None} for name, need in TARGETS.items() if name in teachers}
    for t in result["targets"].values():
        t["met"] = t["speedup"] >= t["required_speedup"]
    result["seconds"] = time.time() - t0
    result["median_speedup"] = statistics.median(c["speedup"] for c in result["cases"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    print(f"[bench_train] wrote {out} ({result['seconds'] / 60:.1f} min)")
    shutil.rmtree(work, ignore_errors=True)


def _subset_manifest(data: list[str], path: Path, n: int) -> None:
    """A fairseq manifest of a seeded subset of ``data`` (absolute paths)."""
    import random

    from distill.data.corpus import list_audio

    items, _ = list_audio(data)
    if n and len(items) > n:
        items = sorted(random.Random(0).sample(items, n), key=lambda i: i.path)
    path.write_text("/\n" + "".join(f"{Path(i.path).resolve().relative_to('/')}\t{i.num_samples}\n" for i in items))


if __name__ == "__main__":
    main()
