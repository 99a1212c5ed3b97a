"""Benchmarks that cannot rot: every script and ``stackdistill bench`` runs in its smoke mode here,
and the JSON it writes holds every field the docs cite (docs/benchmarks.md, docs/export.md); a
failing part leaves the rest measured and is named; a child process's error reaches the parent."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.core.bench_record import BenchmarkIncomplete, BenchRecord
from distill.core.memory import PeakSince

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_record_keeps_finished_parts_and_names_the_failed_one(tmp_path):
    path = tmp_path / "b.json"
    record = BenchRecord(path, {"rows": []})
    assert json.loads(path.read_text()) == {"rows": [], "complete": False, "failed": []}  # on disk from the start
    record.result["rows"].append(record.part("first", lambda: 1))
    assert record.part("second", lambda: 1 / 0) is None
    on_disk = json.loads(path.read_text())  # saved as the part failed, with what came before
    assert on_disk["rows"] == [1] and [f["part"] for f in on_disk["failed"]] == ["second"]
    record.result["rows"].append(record.part("third", lambda: 3))
    with pytest.raises(BenchmarkIncomplete, match="second"):
        record.finish()
    saved = json.loads(path.read_text())
    assert saved["rows"] == [1, 3] and saved["complete"] is False
    assert saved["failed"] == [{"part": "second", "error": "ZeroDivisionError: division by zero"}]
    ok = BenchRecord(tmp_path / "ok.json", {})
    ok.part("only", lambda: None)
    assert ok.finish()["complete"] is True and json.loads((tmp_path / "ok.json").read_text())["complete"] is True


def test_peak_since_catches_a_transient_allocation():
    since = PeakSince.start()
    block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MB, touched
    del block
    summary = since.summary()
    assert summary["peak_since"] == "reset at start"
    assert summary["growth_mb"] > 200  # freed before the reading: only the high-water mark saw it
    assert since.figures()["rss_mb"] < summary["peak_rss_mb"] - 150


# -- scripts/bench_train.py -----------------------------------------------------------------------

STUDENTS = {"mimic-mlp", "mimic-transformer", "distilhubert", "structured"}


def test_bench_train_smoke_writes_every_cited_field(tmp_path):
    out = tmp_path / "bench_train.json"
    _script("bench_train.py", "--smoke", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["complete"] is True and r["failed"] == [] and r["smoke"] is True
    assert {c["student"] for c in r["cases"]} == STUDENTS  # every student row of docs/benchmarks.md's table
    for c in r["cases"]:
        online, cached = c["online"]["audio_seconds_per_second"], c["cached"]["audio_seconds_per_second"]
        assert online > 0 and cached > 0 and c["speedup"] == pytest.approx(cached / online)
        assert c["online"]["timed_steps"] == r["steps_timed"] == c["cached"]["timed_steps"]
        assert c["read_limit_audio_seconds_per_second"] > 0
        assert c["cached_of_read_limit_pct"] == pytest.approx(100 * cached / c["read_limit_audio_seconds_per_second"])
    (cache,) = r["cache"]
    mlp = next(c for c in r["cases"] if c["student"] == "mimic-mlp")
    assert cache["online_epoch_seconds_mimic_mlp"] == pytest.approx(
        cache["audio_seconds"] / mlp["online"]["audio_seconds_per_second"])
    assert cache["build_over_online_epoch"] == pytest.approx(cache["build_seconds"] / cache["online_epoch_seconds_mimic_mlp"])
    assert cache["bytes_on_disk"] > 0 and cache["bytes_per_audio_second"] == pytest.approx(
        cache["bytes_on_disk"] / cache["audio_seconds"])
    # peak memory: short and long files, online and cached, each from the run's own summary
    assert len(r["rss"]) == 4 and {(x["files"].split()[0], x["source"]) for x in r["rss"]} == {
        ("short", "online"), ("short", "cached"), ("long", "online"), ("long", "cached")}
    for x in r["rss"]:
        assert x["peak_rss_mb"] >= x["rss_after_setup_mb"] > 0 and x["peak_since"] == "reset at start"
        assert x["growth_in_training_mb"] == pytest.approx(x["peak_rss_mb"] - x["rss_after_setup_mb"])
    assert set(r["rss_growth_spread_over_file_lengths_mb"]) == {"4s-online", "4s-cached"}
    assert r["median_speedup"] > 0 and "targets" in r


def test_bench_train_child_error_is_shown(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "scripts" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    with pytest.raises(RuntimeError, match="no usable audio found") as err:  # the child's own error, not its status
        bench_train._rss_run({"teacher": "whisper-tiny.en", "data": [str(tmp_path)], "out": str(tmp_path / "run"),
                              "steps": 1, "batch_seconds": 4.0, "cache": False, "cache_root": str(tmp_path / "c")})
    assert "Traceback" in str(err.value)


# -- scripts/bench_analysis.py --------------------------------------------------------------------

ANALYSIS_FIELDS = {"model", "layers", "granularity", "utterances", "forward_seconds", "analysis_seconds_incl_forward",
                   "ratio_to_forward", "peak_rss_growth_mb", "minibatches"}


def test_bench_analysis_smoke_writes_every_cited_field(tmp_path):
    out = tmp_path / "a" / "bench_analysis.json"
    _script("bench_analysis.py", "--smoke", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["complete"] is True and len(r["rows"]) == 2 * 2 * 2  # models x granularities x sizes
    for row in r["rows"]:
        assert ANALYSIS_FIELDS <= set(row)
        assert row["ratio_to_forward"] == pytest.approx(row["analysis_seconds_incl_forward"] / row["forward_seconds"])
        assert row["minibatches"] >= 1 and row["forward_seconds"] > 0
    assert {row["layers"] for row in r["rows"]} == {2, 3}


def test_bench_analysis_failing_part_is_named_and_the_rest_kept(tmp_path):
    out = tmp_path / "a" / "bench_analysis.json"
    proc = _script("bench_analysis.py", "--smoke", "--granularities", "utterance,nonsense", "--out", str(out),
                   check=False)
    assert proc.returncode == 1 and "nonsense" in proc.stderr
    r = json.loads(out.read_text())
    assert r["complete"] is False and len(r["rows"]) == 4 and {x["granularity"] for x in r["rows"]} == {"utterance"}
    assert len(r["failed"]) == 4 and all("nonsense" in f["part"] and "granularity" in f["error"] for f in r["failed"])


# -- scripts/bench_comflp.py ----------------------------------------------------------------------

def test_comflp_benchmark_smoke_writes_every_cited_field(tmp_path):
    out = tmp_path / "bench.json"
    _script("bench_comflp.py", "--smoke", "--out", str(out))
    saved = json.loads(out.read_text())
    assert saved["complete"] is True
    assert saved["timing"] and all({"layers", "n_remove", "proposals", "exact_seconds"} <= set(r)
                                   for r in saved["timing"])
    assert any("exhaustive_seconds" in r for r in saved["timing"])
    assert all(r["same_top10"] for r in saved["timing"] if "same_top10" in r)
    assert saved["beam_misses"] and all({"missed_pct", "matrices", "beam"} <= set(r) for r in saved["beam_misses"])


# -- stackdistill bench ---------------------------------------------------------------------------

BENCH_FIELDS = {"params", "macs_per_audio_second", "seconds_per_audio_second", "real_time_factor", "peak_rss_mb"}


def test_bench_command_smoke_writes_every_cited_field(tiny_whisper_dir, tmp_path):
    from distill.jobs.cli import main

    out = tmp_path / "bench"
    assert main(["bench", str(tiny_whisper_dir), "--smoke", "true", "--out", str(out)]) == 0
    r = json.loads((out / "bench.json").read_text())
    assert r["complete"] is True and r["smoke"] is True and r["settings"] == ["1s_x1"] and r["rounds"] == 1
    assert set(r["models"]) == {tiny_whisper_dir.name, "frontend"}
    for m in r["models"].values():
        assert BENCH_FIELDS <= set(m)
        assert set(m["seconds_per_audio_second"]) == set(m["peak_rss_mb"]) == {"1s_x1"}
        assert m["macs_per_audio_second"]["1s"] > 0 and m["peak_rss_mb"]["1s_x1"] >= 0
    md = (out / "bench.md").read_text()
    assert tiny_whisper_dir.name in md and "failed" not in md.lower()


def test_bench_command_failing_part_keeps_the_rest(tiny_whisper_dir, tmp_path, monkeypatch):
    import distill.jobs.bench_run as bench_run

    def broken(spec, settings, frontend_only=False):
        raise RuntimeError("the memory child died")

    monkeypatch.setattr(bench_run, "peak_rss_in_fresh_process", broken)
    out = tmp_path / "bench"
    with pytest.raises(BenchmarkIncomplete, match="peak memory of"):
        bench_run.run_bench(bench_run.BenchCommandConfig(models=[str(tiny_whisper_dir)], out=str(out), smoke=True))
    r = json.loads((out / "bench.json").read_text())
    assert r["complete"] is False and [f["part"] for f in r["failed"]] == [
        f"peak memory of {tiny_whisper_dir.name}", "peak memory of frontend"]
    assert all("the memory child died" in f["error"] for f in r["failed"])
    for m in r["models"].values():  # the timings and MACs were measured and kept
        assert m["seconds_per_audio_second"]["1s_x1"] > 0 and m["peak_rss_mb"] == {}
    assert "Failed (not measured): peak memory of" in (out / "bench.md").read_text()
    from distill.jobs.cli import main

    assert main(["bench", str(tiny_whisper_dir), "--smoke", "true", "--out", str(tmp_path / "b2")]) == 1


def test_memory_child_error_reaches_the_parent_at_once(tmp_path):
    import time

    from distill.jobs.bench_run import peak_rss_in_fresh_process

    t0 = time.time()
    with pytest.raises(RuntimeError, match="no-such-model") as err:
        peak_rss_in_fresh_process(str(tmp_path / "no-such-model"), [(1.0, 1)], timeout=600)
    assert "Traceback" in str(err.value) and time.time() - t0 < 120  # not the timeout
