"""SUPERB tasks as one file each: layout checks, a short s3prl run per synthetic task, the suite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.protocol import MetricRecord, retention_pct
from tasks.superb.registry import TASKS, get_task
from tasks.superb.suite import SuiteConfig, evaluate, run_suite

from . import references


@pytest.fixture(scope="session")
def iemocap_folder(tmp_path_factory, sentences_corpus) -> Path:
    """A tiny IEMOCAP-layout folder: plumbing only (espeak has no acted emotion; labels cycle)."""
    from distill.data.audio import load_audio, write_wav

    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    clips = sorted(sentences_corpus.rglob("*.flac"))
    emotions = ["neu", "hap", "ang", "sad", "exc", "fru"]
    k = 0
    for s in range(1, 6):
        dialog = f"Ses0{s}F_impro01"
        lines = []
        for u in range(4):
            utt = f"{dialog}_F{u:03d}"
            write_wav(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav", load_audio(clips[k % len(clips)]))
            lines.append(f"[{u}.0000 - {u + 1}.0000]\t{utt}\t{emotions[k % len(emotions)]}\t[2.5000, 2.5000, 2.5000]")
            k += 1
        labels = root / f"Session{s}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("% header\n\n" + "\n".join(lines) + "\n")
    return root


def test_every_task_is_registered_with_its_metric():
    assert {t: (TASKS[t].metric, TASKS[t].higher_is_better) for t in TASKS} == {
        "ks": ("accuracy", True), "sid": ("accuracy", True), "ic": ("accuracy", True), "er": ("accuracy", True),
        "pr": ("per", False), "asr": ("wer", False)}
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sd")


def test_retention_is_an_accuracy_ratio_or_an_error_rate_ratio():
    acc_t = MetricRecord("ks", "accuracy", 0.8, True, 100)
    acc_s = MetricRecord("ks", "accuracy", 0.6, True, 100)
    assert retention_pct(acc_s, acc_t) == pytest.approx(75.0)
    per_t = MetricRecord("pr", "per", 0.2, False, 10, units=400)
    per_s = MetricRecord("pr", "per", 0.4, False, 10, units=400)
    assert retention_pct(per_s, per_t) == pytest.approx(50.0)  # twice the errors: half the teacher
    assert retention_pct(per_s, MetricRecord("asr", "wer", 1.0, False, 10)) is None  # the reference learnt nothing
    assert retention_pct(acc_s, MetricRecord("ks", "accuracy", 0.1, True, 100, chance=0.25)) is None
    lo, hi = per_s.ci95
    assert lo < 0.4 < hi and hi - lo < 0.1  # over 400 phonemes, not 10 utterances


def test_good_layouts_resolve(vox_corpus, fsc_corpus, libri_corpus, iemocap_folder, ks_corpus):
    assert get_task("ks").resolve(str(ks_corpus))["test"].name == "test"
    assert get_task("sid").resolve(str(vox_corpus))["split"].name == "iden_split.txt"
    assert get_task("ic").resolve(str(fsc_corpus))["test_csv"].name == "test_data.csv"
    assert get_task("asr").resolve(str(libri_corpus))["root"].name == "LibriSpeech"  # found inside the root
    assert get_task("pr").resolve(str(libri_corpus))["lexicon"].name == "librispeech-lexicon.txt"
    assert get_task("er").resolve(str(iemocap_folder))["root"] == iemocap_folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_broken_layouts_name_what_is_missing(vox_corpus, fsc_corpus, libri_corpus, iemocap_folder, tmp_path):
    vox = _copy(vox_corpus, tmp_path / "vox")
    next((vox / "dev" / "wav").rglob("*.wav")).unlink()
    with pytest.raises(ValueError, match=r"(?s)missing under .*expected layout"):
        get_task("sid").resolve(str(vox))
    (vox / "iden_split.txt").unlink()
    with pytest.raises(ValueError, match="iden_split.txt"):
        get_task("sid").resolve(str(vox))

    fsc = _copy(fsc_corpus, tmp_path / "fsc")
    (fsc / "data" / "valid_data.csv").unlink()
    with pytest.raises(ValueError, match="valid_data.csv"):
        get_task("ic").resolve(str(fsc))

    libri = _copy(libri_corpus, tmp_path / "ls")
    (libri / "librispeech-lexicon.txt").write_text("THE\tD @\n")
    with pytest.raises(ValueError, match="not in the lexicon"):
        get_task("pr").resolve(str(libri))
    shutil.rmtree(libri / "LibriSpeech" / "dev-clean")
    with pytest.raises(ValueError, match="dev-clean"):
        get_task("asr").resolve(str(libri))

    iemo = _copy(iemocap_folder, tmp_path / "iemo")
    shutil.rmtree(iemo / "Session3")
    with pytest.raises(ValueError, match="Session3"):
        get_task("er").resolve(str(iemo))

    with pytest.raises(ValueError, match="expected layout"):
        evaluate(EvaluateConfig(task="ic", data=str(tmp_path / "nowhere"), model="no-such-model"))  # before loading


def _tiny_student(tiny_whisper_dir, folder: Path) -> Path:
    import students
    from distill.models.teacher import load_teacher

    if not folder.is_dir():
        students.mimic_from_teacher(load_teacher(str(tiny_whisper_dir))).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sid", "ic", "er", "pr", "asr"])
def test_short_run_of_each_task_writes_its_metric(task, tiny_whisper_dir, vox_corpus, fsc_corpus, libri_corpus,
                                                  iemocap_folder, tmp_path, monkeypatch):
    import os

    import s3prl.util.download as dl

    def no_network(*args, **kwargs):
        raise AssertionError(f"s3prl tried to download: {args[:2]}")

    for fn in ("_download_url_to_file", "_download_url_to_file_requests"):
        monkeypatch.setattr(dl, fn, no_network)
    monkeypatch.setattr(os, "system", no_network)  # SID's split file comes by `wget` through os.system
    data = {"sid": vox_corpus, "ic": fsc_corpus, "er": iemocap_folder, "pr": libri_corpus, "asr": libri_corpus}[task]
    out = tmp_path / task
    m = evaluate(EvaluateConfig(task=task, model=str(tiny_whisper_dir), data=str(data), out=str(out), steps=4,
                                eval_every=2, batch_size=4, rnn_hidden=16))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    t = get_task(task)
    assert m["metric"] == t.metric and m["higher_is_better"] == t.higher_is_better and m[f"test_{t.metric}"] == m["value"]
    assert m["steps"] == 4 and m["seconds"] > 0 and m["test_n"] > 0
    if t.higher_is_better:  # an accuracy: a whole number right of test_n, scipy's Wilson interval
        assert 0.0 < m["chance"] <= 1.0
        correct = references.count_of(m["value"], m["test_n"])
        assert m["ci95"] == pytest.approx(references.wilson95(correct, m["test_n"]), abs=1e-9)
    else:  # an error rate: recomputed from s3prl's saved hypotheses and references
        import editdistance

        dump = out / "s3prl" / "evaluate" / "valid_best" / "test-clean"  # s3prl names it by the split
        hyp = dict(line.split(" ", 1) if " " in line else (line, "") for line in (dump / "hyp").read_text().splitlines())
        ref = dict(line.split(" ", 1) for line in (dump / "ref").read_text().splitlines())
        assert set(hyp) == set(ref) and len(ref) == m["test_n"]
        errors = sum(editdistance.eval(hyp[u].split(), ref[u].split()) for u in ref)
        tokens = sum(len(ref[u].split()) for u in ref)
        assert m["units"] == tokens and m["value"] == pytest.approx(errors / tokens, abs=1e-9)
        if task == "asr":  # the references are the test split's transcripts, word for word
            root = get_task("asr").resolve(str(data))["root"]
            words = sum(len(line.split()) - 1 for f in (root / "test-clean").rglob("*.trans.txt")
                        for line in f.read_text().splitlines() if line.strip())
            assert tokens == words
        json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert m["seed"] == 0 and m["batches_seen"] == 4 * m["gradient_accumulate"]


@pytest.mark.slow
def test_suite_table_on_two_models_and_resume(tiny_whisper_dir, ks_corpus, fsc_corpus, tmp_path):
    student = _tiny_student(tiny_whisper_dir, tmp_path / "student")
    base = EvaluateConfig(steps=4, eval_every=2, batch_size=8)
    cfg = SuiteConfig(tasks=["ks", "ic"], models=[str(tiny_whisper_dir), str(student)], names=["teacher", "mimic"],
                      data={"ks": str(ks_corpus), "ic": str(fsc_corpus)}, out=str(tmp_path / "suite"), evaluate=base)
    suite = run_suite(cfg)
    row = suite["models"]["mimic"]
    assert set(row["tasks"]) == {"ks", "ic"} and row["params_total"] > 0 and row["macs_per_audio_second"] > 0
    for task in ("ks", "ic"):
        cell, ref = row["tasks"][task], suite["models"]["teacher"]["tasks"][task]
        assert cell["test_n"] > 0 and len(cell["ci95"]) == 2
        assert ref["retention_pct"] is None
        # each cell at its own lr: the task's and ten times it, chosen by validation; two seeds
        assert cell["lr_selection"]["grid"] == [get_task(task).default_lr, 10 * get_task(task).default_lr]
        assert cell["lr"] in cell["lr_selection"]["grid"] and len(cell["seed_runs"]["values"]) == 2
        if ref["value"] > ref["chance"]:
            assert cell["retention_pct"] == pytest.approx(100 * cell["value"] / ref["value"])
        else:  # a reference at chance has nothing to retain
            assert cell["retention_pct"] is None
    md = (tmp_path / "suite" / "suite.md").read_text()
    assert "| mimic |" in md and "KS ACCURACY" in md and "n = " in md and "by validation" in md
    assert (tmp_path / "suite" / "suite.png").stat().st_size > 0
    from PIL import Image

    for task in ("ks", "ic"):  # each task's metric against size: written, framed, the frontier listed
        with Image.open(suite["task_pngs"][task]) as im:
            assert im.size == (726, 506)
        points = {n: (r["params_total"], r["tasks"][task]["value"]) for n, r in suite["models"].items()}
        smaller_better = [n for n in points if points[n][0] < points[n if n == "teacher" else "teacher"][0]]
        assert smaller_better == ["mimic"]
        # mimic is smaller: on the frontier always; the teacher only if it scores higher
        expected = ["mimic"] + (["teacher"] if points["teacher"][1] > points["mimic"][1] else [])
        assert suite["frontier"][task] == expected
    assert "Non-dominated per task" in md
    stamp = (tmp_path / "suite" / "mimic" / "ic" / "metrics.json").stat().st_mtime_ns
    again = run_suite(cfg)  # every cell finished: nothing recomputed
    assert (tmp_path / "suite" / "mimic" / "ic" / "metrics.json").stat().st_mtime_ns == stamp
    assert again["models"]["mimic"]["tasks"] == suite["models"]["mimic"]["tasks"]


def test_the_downstream_seed_changes_the_downstream_run(tiny_whisper_dir, ks_corpus, tmp_path):
    """s3prl reseeds with 0 while building the featurizer; the patch keeps --seed in force (issue 17)."""
    from tasks.superb.evaluate import run_task

    runs = [run_task(EvaluateConfig(task="ks", model=str(tiny_whisper_dir), data=str(ks_corpus),
                                    out=str(tmp_path / f"seed{s}"), steps=4, eval_every=2, batch_size=4, seed=s))
            for s in (0, 1, 0)]
    assert runs[0]["extra"]["test_loss"] != runs[1]["extra"]["test_loss"]  # another seed, another head
    assert runs[0]["extra"]["test_loss"] == runs[2]["extra"]["test_loss"]  # the same seed, the same figures
