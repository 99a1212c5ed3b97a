"""Fine-tuning with a classification head: labelled corpora, the loop, folders transformers loads alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.core.stats import accuracy_record, wilson
from distill.jobs.finetune_run import FinetuneConfig, finetune
from distill.models.teacher import load_teacher
from distill.training.finetune import classifier_accuracy
from distill.training.loop import TrainConfig
from tasks.corpora.labelled import load_labelled

from . import references
from .conftest import save_tiny_model


@pytest.mark.parametrize("correct,n", [(87, 100), (172, 198), (0, 20), (20, 20), (554, 1108), (1, 3), (830, 1108)])
def test_wilson_interval_matches_scipy(correct, n):
    assert wilson(correct, n) == pytest.approx(references.wilson95(correct, n), abs=1e-12)
    r = accuracy_record(correct, n)
    assert r["accuracy"] == correct / n and (r["correct"], r["n"]) == (correct, n)
    assert r["ci95"] == pytest.approx(references.wilson95(correct, n), abs=1e-12)


def test_speech_commands_reader_follows_s3prl_split(ks_corpus):
    from s3prl.dataio.corpus.speech_commands import SpeechCommandsV1

    corpus = load_labelled("ks", str(ks_corpus))
    ref_train, ref_valid = SpeechCommandsV1.split_dataset(ks_corpus / "train")
    words = lambda items: sorted(Path(i.path).name + Path(i.path).parent.name for i in items  # noqa: E731
                                 if i.label != "_silence_")
    assert words(corpus.train) == sorted(Path(p).name + Path(p).parent.name for _, p in ref_train)
    assert words(corpus.valid) == sorted(Path(p).name + Path(p).parent.name for _, p in ref_valid)
    assert corpus.labels[-2:] == ["_unknown_", "_silence_"] and len(corpus.labels) == 12
    silence = [i for i in corpus.train if i.label == "_silence_"]
    assert silence and all(i.num_samples <= 16000 for i in silence) and len({i.offset for i in silence}) > 1
    assert {i.label for i in corpus.test} == set(corpus.labels)  # the test root holds every class
    assert all(i.label == "_unknown_" for i in corpus.train if Path(i.path).parent.name == "bed")


def _tone_folder(root: Path, labels=("low", "high"), per_label=12) -> Path:
    rng = np.random.default_rng(0)
    for k, label in enumerate(labels):
        for n in range(per_label):
            t = np.arange(8000) / 16000
            wav = 0.3 * np.sin(2 * np.pi * (200 + 1800 * k) * t) + 0.02 * rng.standard_normal(8000)
            (root / label).mkdir(parents=True, exist_ok=True)
            sf.write(root / label / f"{n:03d}.wav", wav.astype(np.float32), 16000)
    return root


def test_label_folder_and_voxceleb_readers(tmp_path):
    corpus = load_labelled("folders", str(_tone_folder(tmp_path / "tones")), valid_fraction=0.2, test_fraction=0.2)
    assert corpus.labels == ["high", "low"] and len(corpus.train) + len(corpus.valid) + len(corpus.test) == 24
    vox = tmp_path / "vox"
    lines = []
    for spk in ("id10001", "id10002"):
        for video, part in (("v1", "1"), ("v2", "2"), ("v3", "3")):
            path = vox / ("dev" if part != "3" else "test") / "wav" / spk / video / "00001.wav"
            path.parent.mkdir(parents=True)
            sf.write(path, np.zeros(8000, np.float32) + 0.01, 16000)
            lines.append(f"{part} {spk}/{video}/00001.wav")
    lines.append("1 id10003/v9/00001.wav")  # listed, missing: skipped and counted
    (vox / "iden_split.txt").write_text("\n".join(lines) + "\n")
    sid = load_labelled("sid", str(vox))
    assert sid.labels == ["id10001", "id10002"] and [len(sid.train), len(sid.valid), len(sid.test)] == [2, 2, 2]
    assert len(sid.skipped) == 1 and "missing" in sid.skipped[0].reason
    with pytest.raises(ValueError, match="iden_split.txt"):
        load_labelled("sid", str(tmp_path / "tones"))


def _cfg(model: str, data: Path, out: Path, task: str = "folders", **train) -> FinetuneConfig:
    t = dict(max_steps=40, lr=3e-3, warmup_steps=2, batch_seconds=4.0, eval_every=10, save_every=20, log_every=5)
    t.update(train)
    return FinetuneConfig(model=model, task=task, data=str(data), out=str(out), valid_fraction=0.25,
                          test_fraction=0.25, train=TrainConfig(**t))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


LOAD_WITH_TRANSFORMERS_ALONE = """
import json, sys
import torch
from transformers import AutoModelForAudioClassification
model = AutoModelForAudioClassification.from_pretrained(sys.argv[1]).eval()
assert not [m for m in sys.modules if m.split(".")[0] in ("distill", "students", "tasks")]
wav = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = model(wav).logits
print(json.dumps({"logits": logits[0].tolist(), "labels": [model.config.id2label[i] for i in range(2)],
                  "class": type(model).__name__}))
"""


@pytest.mark.slow
def test_finetuning_a_hubert_teacher_lowers_the_loss_and_saves_a_plain_classification_folder(tmp_path):
    data = _tone_folder(tmp_path / "tones")
    teacher = save_tiny_model("hubert", tmp_path / "hubert")
    summary = finetune(_cfg(str(teacher), data, tmp_path / "run"))
    rows = _rows(tmp_path / "run")
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < 0.5 * losses[0] and summary["best_valid_accuracy"] >= 0.9
    assert summary["test"]["n"] == 6 and summary["test"]["ci95"][0] <= summary["test"]["accuracy"]
    best = tmp_path / "run" / "best"
    assert json.loads((best / "config.json").read_text())["architectures"] == ["HubertForSequenceClassification"]
    # transformers alone (a clean process) loads it and gives our logits
    wav = 0.3 * torch.sin(2 * torch.pi * 2000 * torch.arange(8000) / 16000)[None]
    torch.save(wav, tmp_path / "wav.pt")
    proc = subprocess.run([sys.executable, "-c", LOAD_WITH_TRANSFORMERS_ALONE, str(best), str(tmp_path / "wav.pt")],
                          capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout)
    ours = load_teacher(str(best))  # a teacher again: its encoder, with the head and labels riding along
    assert ours.labels == theirs["labels"] == ["high", "low"] and ours.num_layers == 3
    states, fl = ours(wav)
    torch.testing.assert_close(ours.head(states[-1], fl)[0], torch.tensor(theirs["logits"]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_finetuning_the_whisper_teacher_on_keyword_spotting(tiny_whisper_dir, ks_corpus, tmp_path):
    from transformers import WhisperForAudioClassification

    summary = finetune(_cfg(str(tiny_whisper_dir), ks_corpus, tmp_path / "run", task="ks", max_steps=30, cache=True,
                            eval_every=15))
    assert summary["targets"]["source"] == "cache" and summary["targets"]["cache"]["slots"] == ["features"]
    rows = _rows(tmp_path / "run")
    assert [r for r in rows if "valid_accuracy" in r]
    model = WhisperForAudioClassification.from_pretrained(tmp_path / "run" / "best")
    assert model.config.num_labels == 12 and model.config.id2label[11] == "_silence_"
    ours = load_teacher(str(tmp_path / "run" / "best"))
    torch.testing.assert_close(model.encoder.layers[0].fc1.weight, ours.stack.layers[0].fc1.weight)
    again = classifier_accuracy(ours, load_labelled("ks", str(ks_corpus)).test, 4.0)
    assert again == summary["test"]  # the test figure is that of the saved folder


def test_scoring_from_stored_frontend_output_equals_running_the_model(ks_corpus, tiny_whisper_dir, tmp_path):
    from distill.analysis.prune import prune
    from distill.models.classifier import ClassificationHead
    from distill.training.finetune import FrontendTestSet

    teacher = load_teacher(str(tiny_whisper_dir))
    corpus = load_labelled("ks", str(ks_corpus))
    torch.manual_seed(0)
    teacher.head, teacher.labels = ClassificationHead(teacher.info.dim, 12).eval(), corpus.labels
    test_set = FrontendTestSet(teacher, corpus.test, 4.0)
    for model in (teacher, prune(teacher, [2])):
        assert test_set.shares_frontend(model)
        stored = test_set.logits(model)
        assert sorted(stored) == list(range(len(corpus.test)))  # every test utterance, once
        for i in range(0, len(corpus.test), 3):  # the reference: the whole model on the utterance alone
            wav = torch.as_tensor(sf.read(corpus.test[i].path, dtype="float32")[0])[None, : 4 * 16000]
            feats, states, frame_lengths = model.features_and_states(wav, torch.tensor([wav.shape[1]]))
            torch.testing.assert_close(stored[i], model.head(states[-1], frame_lengths)[0], atol=1e-4, rtol=1e-4)
        record = test_set.accuracy(model)
        right = sum(int(stored[i].argmax()) == corpus.labels.index(item.label) for i, item in enumerate(corpus.test))
        assert (record["correct"], record["n"]) == (right, len(corpus.test))
        assert record == classifier_accuracy(model, corpus.test, 4.0)
    from distill.jobs.paper_checks import stage1_check

    itself = stage1_check(teacher, teacher, test_set)  # the teacher as its own student: by hand = scorer
    assert itself["cosine"] == pytest.approx(1.0) and itself["norm_ratio"] == pytest.approx(1.0)
    assert itself["accuracy"] == test_set.accuracy(teacher)["accuracy"] and itself["n"] == len(corpus.test)
    other = load_teacher(str(save_tiny_model("whisper", tmp_path / "other", seed=1)))
    other.head, other.labels = teacher.head, teacher.labels
    assert not test_set.shares_frontend(other)  # another frontend: run whole, never from the stored features
    with pytest.raises(ValueError, match="does not share"):
        test_set.logits(other)
    assert test_set.accuracy(other) == classifier_accuracy(other, corpus.test, 4.0)


def _tone_items(root: Path, counts: dict[str, int], freqs: dict[str, float], seed: int) -> list:
    from distill.data.corpus import AudioItem

    rng, items = np.random.default_rng(seed), []
    for label, n in counts.items():
        for k in range(n):
            t = np.arange(8000) / 16000
            wav = 0.2 * np.sin(2 * np.pi * freqs[label] * (1 + 0.03 * rng.standard_normal()) * t)
            wav = wav + 0.05 * rng.standard_normal(8000)
            path = root / label / f"{seed}-{k:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wav.astype(np.float32), 16000)
            items.append(AudioItem(str(path), 8000, label=label))
    return items


def test_the_linear_classifier_on_the_frontend_output_learns_what_a_logistic_regression_learns(tiny_whisper_dir,
                                                                                              tmp_path):
    """Issue 17: on raw frontend output the baseline only learnt the class prior (the majority class).

    An imbalanced training set (like KS, where ``_unknown_`` is most of it) of three tones, a
    balanced test set: the baseline must beat the majority class and come near an independent
    reference, scikit-learn's standardised logistic regression on the same pooled features
    (computed here from the frontend directly, not through the library's pooling).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from distill.training.finetune import finetune_model
    from tasks.corpora.labelled import LabelledCorpus

    freqs = {"low": 300.0, "mid": 900.0, "high": 2400.0}
    corpus = LabelledCorpus("folders", ["high", "low", "mid"],
                            _tone_items(tmp_path / "train", {"low": 40, "mid": 8, "high": 8}, freqs, 0),
                            _tone_items(tmp_path / "valid", {"low": 4, "mid": 4, "high": 4}, freqs, 1),
                            _tone_items(tmp_path / "test", {"low": 10, "mid": 10, "high": 10}, freqs, 2))
    teacher = load_teacher(str(tiny_whisper_dir))

    def pooled(items):
        rows = []
        with torch.no_grad():
            for item in items:
                wav = torch.from_numpy(sf.read(item.path, dtype="float32")[0])[None]
                feats, n = teacher.frontend(wav, torch.tensor([wav.shape[1]]))
                rows.append(feats[0, : int(n[0])].mean(0).double().numpy())
        return np.stack(rows), np.array([i.label for i in items])

    x_train, y_train = pooled(corpus.train)
    x_test, y_test = pooled(corpus.test)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_train, y_train)
    ref_acc = float((reference.predict(x_test) == y_test).mean())
    assert ref_acc > 0.8  # the task is learnable from the frontend output
    from distill.data.cache import CacheConfig

    for cached in (False, True):  # the cache stores the frontend output in float16: its rounding is no signal
        t = TrainConfig(max_steps=300, lr=1e-2, warmup_steps=10, batch_seconds=4.0, eval_every=100,
                        save_every=300, log_every=50, cache=cached)
        run = finetune_model(teacher, corpus, tmp_path / f"run{int(cached)}", t,
                             CacheConfig(root=str(tmp_path / "cache")), stack=False)
        acc = run["test"]["accuracy"]
        assert acc > 1 / 3 + 0.25 and acc >= ref_acc - 0.15, (cached, acc, ref_acc)
    from distill.models.classifier import load_classifier

    head = load_classifier(tmp_path / "run1" / "best").head
    assert head.standardize  # saved with its statistics: those of the training set, computed independently
    np.testing.assert_allclose(head.input_mean.numpy(), x_train.mean(0), rtol=1e-4, atol=1e-5)
    keep = x_train.std(0) > 1e-3 * np.sqrt((x_train ** 2).mean(0))  # a spread below float16 rounding: dropped
    np.testing.assert_array_equal(head.input_keep.numpy(), keep.astype(np.float32))
    np.testing.assert_allclose(head.input_scale.numpy()[keep], x_train.std(0)[keep], rtol=1e-3)
