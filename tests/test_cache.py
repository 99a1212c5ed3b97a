"""The teacher-target cache: hits, invalidation by every key part, interrupted builds, equality with
the teacher's own outputs, and training from it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.audio import SAMPLE_RATE
from distill.batches import BatchPlan, CachedSource, OnlineSource
from distill.cache import CacheConfig, CacheSpec, TargetCache, prepare_cache
from distill.data import list_audio, load_segments, split_items
from distill.teacher import load_teacher
from distill.train import DistillConfig, TrainConfig, distill
from students.mimic import MimicOptions
from students.registry import StudentSpec, build_student

from .conftest import save_tiny_model

CROP, MIN = int(1.5 * SAMPLE_RATE), 1600


@pytest.fixture
def corpus(sentences_corpus, tmp_path) -> Path:
    """A private copy of the sentences (tests here change files)."""
    return Path(shutil.copytree(sentences_corpus, tmp_path / "data"))


@pytest.fixture(scope="module")
def teacher(tiny_whisper_dir):
    return load_teacher(str(tiny_whisper_dir))


def _spec(layers=(1, 3), features=True, crop=CROP) -> CacheSpec:
    return CacheSpec(tuple(layers), features, crop, MIN)


def _cfg(root: Path, **kw) -> CacheConfig:
    return CacheConfig(root=str(root), shard_mb=kw.pop("shard_mb", 0.05), **kw)


def _build(teacher, data: Path, root: Path, spec=None, **kw) -> TargetCache:
    items, _ = list_audio(data)
    return prepare_cache(teacher, items, spec or _spec(), _cfg(root, **kw), progress=False)


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_cached_targets_equal_the_teachers_own(teacher, corpus, tmp_path):
    cache = _build(teacher, corpus, tmp_path / "cache")
    items, _ = list_audio(corpus)
    assert len(cache.manifest["shards"]) > 1 and cache.slots == ["features", 1, 3]
    per_item = {}
    for i, (item, start, samples, frames, _) in enumerate(cache.index.tolist()):
        per_item.setdefault(item, []).append((i, start, samples, frames))
    assert sorted(per_item) == list(range(len(items)))  # every file, in order
    for item, segments in per_item.items():
        spans = [(s, n) for _, s, n, _ in segments]
        assert spans[0][0] == 0 and all(n <= CROP for _, n in spans)
        assert sum(n for _, n in spans) >= items[item].num_samples - MIN  # the file covered, tail aside
        for (i, _, _, frames), wav in zip(segments, load_segments(items[item], spans, MIN)):
            feats, states, fl = teacher.features_and_states(wav[None])
            assert int(fl[0]) == frames
            stored = torch.from_numpy(np.array(cache.read(i))).float()
            for slot, online in zip(cache.slots, (feats, states[1], states[3])):
                torch.testing.assert_close(stored[:, cache.slot(slot)], online[0], rtol=2e-3, atol=2e-3)


def test_unchanged_rerun_reuses_it_and_a_subset_of_layers_is_served(teacher, corpus, tmp_path):
    first = _build(teacher, corpus, tmp_path / "cache")
    before = _files(first.folder)
    again = _build(teacher, corpus, tmp_path / "cache")
    assert again.reused and again.folder == first.folder and _files(again.folder) == before
    subset = _build(teacher, corpus, tmp_path / "cache", _spec(layers=(3,), features=False))
    assert subset.reused and subset.folder == first.folder


@pytest.mark.parametrize("change", ["teacher weights", "data file", "segmentation", "layers"])
def test_each_key_part_invalidates_it(teacher, tiny_whisper_dir, corpus, tmp_path, change):
    first = _build(teacher, corpus, tmp_path / "cache")
    spec, other_teacher = _spec(), teacher
    if change == "teacher weights":  # same architecture and name, one weight changed
        folder = Path(shutil.copytree(tiny_whisper_dir, tmp_path / "teacher"))
        other_teacher = load_teacher(str(folder))
        other_teacher.name = teacher.name
        with torch.no_grad():
            other_teacher.stack.layers[0].fc1.weight[0, 0] += 0.5
    elif change == "data file":
        wav = next(corpus.rglob("*.flac"))
        os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    elif change == "segmentation":
        spec = _spec(crop=CROP // 2)
    else:
        spec = _spec(layers=(2, 3))
    second = _build(other_teacher, corpus, tmp_path / "cache", spec)
    assert not second.reused and second.folder != first.folder
    if change == "layers":  # another variant next to the first, same audio key
        assert second.folder.parent == first.folder.parent
    else:
        assert second.folder.parent != first.folder.parent


def test_an_interrupted_build_is_detected_and_completed(teacher, corpus, tmp_path, monkeypatch):
    import distill.cache as cache_mod

    reference = _build(teacher, corpus, tmp_path / "reference")
    commits = []
    original = cache_mod._ShardWriter.commit

    def dies_after_two(self, skipped, rank=0):
        if len(commits) == 2:
            raise KeyboardInterrupt("killed")  # as if the process died here
        commits.append(self.name)
        original(self, skipped, rank)

    monkeypatch.setattr(cache_mod._ShardWriter, "commit", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        _build(teacher, corpus, tmp_path / "cache")
    monkeypatch.setattr(cache_mod._ShardWriter, "commit", original)
    folder = next((tmp_path / "cache").glob("*/*/plan.json")).parent
    assert not (folder / "manifest.json").exists()
    with pytest.raises(ValueError, match="not a complete"):
        TargetCache(folder)  # never read as whole
    (folder / ".shard_00002.f16.tmp-999").write_bytes(b"half a shard")  # what a kill mid-write leaves
    done = {n: (folder / f"{n}.f16").stat().st_mtime_ns for n in commits}
    completed = _build(teacher, corpus, tmp_path / "cache")
    assert completed.folder == folder and not completed.reused
    assert {n: (folder / f"{n}.f16").stat().st_mtime_ns for n in commits} == done  # kept, not rebuilt
    assert not list(folder.glob(".*tmp*"))
    np.testing.assert_array_equal(completed.index, reference.index)
    for i in range(len(reference)):
        np.testing.assert_array_equal(np.asarray(completed.read(i)), np.asarray(reference.read(i)))


def test_disk_estimate_over_max_gb_refuses_before_writing(teacher, corpus, tmp_path):
    with pytest.raises(ValueError, match="over cache.max_gb"):
        _build(teacher, corpus, tmp_path / "cache", max_gb=1e-6)
    assert not list((tmp_path / "cache").rglob("*.f16"))


def test_bad_files_are_skipped_and_counted_in_build_and_training(teacher, corpus, tmp_path):
    (corpus / "broken.wav").write_bytes(b"RIFF....WAVEnothing")
    nan = 0.1 * np.ones(16000, np.float32)
    nan[5] = np.nan
    sf.write(corpus / "nan.wav", nan, 16000, subtype="FLOAT")
    cache = _build(teacher, corpus, tmp_path / "cache")
    assert [Path(p).name for p in cache.manifest["skipped"]] == ["nan.wav"]  # broken.wav: never listed
    summary = distill(_train_cfg(teacher.name, corpus, tmp_path / "run", tmp_path / "cache", cache=True))
    assert {Path(p).name for p in summary["skipped"]} == {"broken.wav", "nan.wav"}
    assert summary["files_used"] == summary["files_listed"] - 1


def _train_cfg(teacher: str, data: Path, out: Path, cache_root: Path, cache: bool, steps: int = 40) -> DistillConfig:
    return DistillConfig(teacher=teacher, data=[str(data)], out=str(out),
                         student=StudentSpec(sections={"mimic": MimicOptions(mimic_dim=16)}),
                         train=TrainConfig(max_steps=steps, lr=3e-3, warmup_steps=2, batch_seconds=4.0,
                                           crop_seconds=1.5, valid_fraction=0.15, eval_every=10, save_every=20,
                                           log_every=2, seed=0, cache=cache),
                         cache=_cfg(cache_root))


def _losses(run: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_cached_training_lowers_the_loss_like_online_training_without_running_the_teacher(
        tiny_whisper_dir, corpus, tmp_path, monkeypatch):
    from distill.teacher import Teacher

    online = distill(_train_cfg(str(tiny_whisper_dir), corpus, tmp_path / "online", tmp_path / "cache", False))
    # build the cache first, then forbid the teacher's forward pass: training must read the cache only
    items, _ = list_audio(corpus)
    prepare_cache(load_teacher(str(tiny_whisper_dir)), items, _spec(), _cfg(tmp_path / "cache"), progress=False)

    def no_teacher(*_a, **_k):
        raise AssertionError("the teacher ran during cached training")

    monkeypatch.setattr(Teacher, "features_and_states", no_teacher)
    cached = distill(_train_cfg(str(tiny_whisper_dir), corpus, tmp_path / "cached", tmp_path / "cache", True))
    assert cached["targets"]["source"] == "cache" and online["targets"]["source"] == "online"
    for run in ("online", "cached"):
        train, valid = _losses(tmp_path / run, "train_loss"), _losses(tmp_path / run, "valid_loss")
        assert train[-1] < 0.7 * train[0] and valid[-1] < valid[0], run
    # same validation audio in both, same student start: the first validation losses agree (float16 targets)
    assert _losses(tmp_path / "cached", "valid_loss")[-1] == pytest.approx(online["best_valid_loss"], rel=0.25)


def test_validation_is_the_same_audio_online_and_cached(teacher, corpus, tmp_path):
    """Both sources validate on the first window of each held-out file: equal losses, float16 aside."""
    from distill.losses import pairs_loss

    items, _ = list_audio(corpus)
    train_items, valid_items = split_items(items, 0.3, 0, 64)
    spec = _spec(layers=(2, 3))
    cache = prepare_cache(teacher, items, spec, _cfg(tmp_path / "cache"), progress=False)
    student = build_student(StudentSpec(sections={"mimic": MimicOptions(mimic_dim=16, target_layers=[2, 3])}),
                            teacher)
    plan = BatchPlan(4 * SAMPLE_RATE, 64, 0)
    index = {item.path: i for i, item in enumerate(items)}
    online = OnlineSource(teacher, train_items, valid_items, plan, CROP, MIN, True, "cpu")
    cached = CachedSource(cache, teacher, items, [index[i.path] for i in train_items],
                          [index[i.path] for i in valid_items], plan, [2, 3], True, "cpu")

    def total(source):
        loss = frames = 0.0
        with torch.no_grad():
            for b in source.valid_batches():
                pairs = student.distill_pairs(student.stack(b.inputs, b.input_lengths), b.targets)
                n = float(b.frame_lengths.sum())
                loss += float(pairs_loss(pairs, b.frame_lengths)[0]) * n
                frames += n
        return loss / frames, frames

    (a, fa), (b, fb) = total(online), total(cached)
    assert fa == fb > 0 and b == pytest.approx(a, rel=1e-3)


def test_a_student_that_trains_its_frontend_reads_audio_beside_the_cache(tiny_whisper_dir, corpus, tmp_path):
    cfg = _train_cfg(str(tiny_whisper_dir), corpus, tmp_path / "run", tmp_path / "cache", True, steps=6)
    cfg.student.train_frontend = True
    summary = distill(cfg)
    assert summary["targets"]["cache"]["slots"] == [1, 3]  # targets only: the student computes its own input
    losses = _losses(tmp_path / "run", "train_loss")
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_cache_build_command_and_a_distill_run_find_the_same_cache(tiny_whisper_dir, corpus, tmp_path, capsys):
    from distill.cli import main

    common = ["--teacher", str(tiny_whisper_dir), "--data", str(corpus), "--cache.root", str(tmp_path / "cache")]
    assert main(["cache", "build", *common, "--crop_seconds", "1.5"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert not built["reused"] and built["slots"] == ["features", 1, 2, 3] and built["bytes"] > 0
    assert main(["cache", "build", *common, "--crop_seconds", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"]
    assert main(["distill", *common, "--out", str(tmp_path / "run"), "--train.cache", "true",
                 "--train.crop_seconds", "1.5", "--train.max_steps", "3", "--train.eval_every", "3",
                 "--train.save_every", "3", "--student.mimic.mimic_dim", "8"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["targets"]["cache"]["folder"] == built["folder"]


def test_a_teacher_of_another_architecture_caches_too(tmp_path, corpus):
    hubert = load_teacher(str(save_tiny_model("hubert", tmp_path / "hubert")))
    cache = _build(hubert, corpus, tmp_path / "cache", _spec(layers=(1, 3)))
    first = cache.index[0]
    items, _ = list_audio(corpus)
    wav = load_segments(items[int(first[0])], [(int(first[1]), int(first[2]))], MIN)[0]
    _, states, _ = hubert.features_and_states(wav[None])
    torch.testing.assert_close(torch.from_numpy(np.array(cache.read(0)[:, cache.slot(3)])).float(), states[3][0],
                               rtol=2e-3, atol=2e-3)
