"""Settings that cannot work fail at once, naming the flag, before a teacher loads or an out folder appears."""

from __future__ import annotations

import time

import pytest

import distill.jobs.analyze
import distill.jobs.prune_run
import distill.models.teacher
from distill.cli import main
from distill.core.config import load_config
from distill.jobs.analyze import AnalyzeConfig, run_analysis
from distill.jobs.prune_run import PruneConfig, run_prune
from distill.models.teacher import check_teacher_spec, load_teacher, looks_like_hub_id, looks_like_local_path

UNKNOWN_HUB_ID = "stackdistill-tests/no-such-model"


@pytest.fixture
def no_teacher(monkeypatch):
    """Any attempt to load a teacher fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the teacher was loaded before the settings were checked")
    for module in (distill.jobs.analyze, distill.jobs.prune_run):
        monkeypatch.setattr(module, "load_teacher", refuse)


def _analyze(tiny_whisper_dir, data, out, **settings) -> AnalyzeConfig:
    return load_config(AnalyzeConfig, None, {"teacher": str(tiny_whisper_dir), "data": [str(data)], "out": str(out),
                                             "crop_seconds": 1.0, **settings})


def _prune(tiny_whisper_dir, data, out, **settings) -> PruneConfig:
    return load_config(PruneConfig, None, {"teacher": str(tiny_whisper_dir), "data": [str(data)], "out": str(out),
                                           "metric": "reconstruction", "similarity.batch_size": 8,
                                           "similarity.knn_k": 3, "crop_seconds": 1.0, **settings})


# -- analyze and prune: every setting checked before the teacher ------------------------------------------------


def test_analyze_batch_size_above_the_utterances(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = _analyze(tiny_whisper_dir, sentences_corpus, tmp_path / "out", **{"similarity.batch_size": 1000})
    with pytest.raises(ValueError, match=r"--similarity\.batch_size 1000 is more than the 16 utterances analysed"):
        run_analysis(cfg)
    assert not (tmp_path / "out").exists()


def test_analyze_knn_k_not_below_the_batch(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = _analyze(tiny_whisper_dir, sentences_corpus, tmp_path / "out",
                   **{"similarity.batch_size": 8, "similarity.knn_k": 8})
    with pytest.raises(ValueError, match=r"--similarity\.knn_k 8 must lie in \[1, 7\]"):
        run_analysis(cfg)
    assert not (tmp_path / "out").exists()


def test_analyze_missing_data_names_the_flag(no_teacher, tiny_whisper_dir, tmp_path):
    cfg = _analyze(tiny_whisper_dir, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match=r"--data .*nowhere: not found"):
        run_analysis(cfg)
    assert not (tmp_path / "out").exists()


def test_prune_knn_k_above_the_utterances(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = _prune(tiny_whisper_dir, sentences_corpus, tmp_path / "out", knn_k=40)
    with pytest.raises(ValueError, match=r"--knn_k 40 must be below the 16 utterances analysed"):
        run_prune(cfg)
    assert not (tmp_path / "out").exists()


def test_prune_knn_k_below_one(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = _prune(tiny_whisper_dir, sentences_corpus, tmp_path / "out", knn_k=0)
    with pytest.raises(ValueError, match=r"--knn_k must be at least 1"):
        run_prune(cfg)


def test_prune_probe_metric_without_probe_data(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = _prune(tiny_whisper_dir, sentences_corpus, tmp_path / "out", metric="probe")
    with pytest.raises(ValueError, match=r"--metric probe needs --probe\.data"):
        run_prune(cfg)
    assert not (tmp_path / "out").exists()


def test_prune_probe_data_not_found(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = _prune(tiny_whisper_dir, sentences_corpus, tmp_path / "out",
                 **{"metric": "probe", "probe.data": str(tmp_path / "no_ks")})
    with pytest.raises(ValueError, match=r"--probe\.data .*no_ks: not found"):
        run_prune(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings,flag", [
    ({"orderings": ["last", "deepest"]}, "--orderings"),
    ({"metric": "wer"}, "--metric"),
    ({"comflp.strategy": "random"}, "--comflp.strategy"),
    ({"similarity.granularity": "words"}, "--similarity.granularity"),
])
def test_prune_unknown_names(no_teacher, tiny_whisper_dir, sentences_corpus, tmp_path, settings, flag):
    with pytest.raises(ValueError, match=flag.replace(".", r"\.")):
        run_prune(_prune(tiny_whisper_dir, sentences_corpus, tmp_path / "out", **settings))
    assert not (tmp_path / "out").exists()


def test_prune_command_line_names_the_flag_and_leaves_no_folder(tiny_whisper_dir, sentences_corpus, tmp_path,
                                                                capsys):
    out = tmp_path / "out"
    code = main(["prune", "--teacher", str(tiny_whisper_dir), "--data", str(sentences_corpus), "--out", str(out),
                 "--metric", "reconstruction", "--similarity.batch_size", "8", "--similarity.knn_k", "3",
                 "--knn_k", "40"])
    err = capsys.readouterr().err
    assert code == 2 and "--knn_k 40 must be below the 16 utterances" in err
    assert not out.exists()


# -- teacher specs: a missing folder is "not found"; a hub id fails in seconds ---------------------------------


@pytest.mark.parametrize("spec,is_hub", [
    ("facebook/hubert-base-ls960", True), ("openai/whisper-tiny.en", True),
    ("/abs/model", False), ("./model", False), ("../model", False), ("~/model", False),
    ("runs/a/pruned", False), ("model.safetensors", False), ("org/ckpt.pt", False),
])
def test_spec_shapes(spec, is_hub):
    assert looks_like_hub_id(spec) == is_hub
    assert looks_like_local_path(spec) == (not is_hub)


@pytest.mark.parametrize("relative", ["no_such_teacher", "no/such/teacher", "teacher.safetensors"])
def test_missing_local_folder_is_not_found(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    for spec in (str(tmp_path / relative), f"./{relative}"):
        t0 = time.monotonic()
        with pytest.raises(ValueError) as err:
            load_teacher(spec)
        assert f"teacher folder not found: {spec}" == str(err.value)
        assert "huggingface-cli" not in str(err.value)
        assert time.monotonic() - t0 < 3


def test_uncached_hub_id_offline_is_one_line_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ValueError) as err:
        load_teacher(UNKNOWN_HUB_ID)
    assert time.monotonic() - t0 < 3
    text = str(err.value)
    assert "\n" not in text and "offline mode is on (HF_HUB_OFFLINE=1)" in text
    assert f"huggingface-cli download {UNKNOWN_HUB_ID}" in text and "--teacher DIR" in text


def test_uncached_hub_id_offline_from_the_command_line(no_teacher, sentences_corpus, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code = main(["analyze", "--teacher", UNKNOWN_HUB_ID, "--data", str(sentences_corpus),
                 "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "offline mode is on (TRANSFORMERS_OFFLINE=1)" in err[0]
    assert not (tmp_path / "out").exists()


def test_uncached_hub_id_without_network_fails_in_seconds(monkeypatch):
    """This machine cannot reach the hub: one quick request decides, not transformers' retries."""
    for name in distill.models.teacher.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distill.models.teacher, "HUB_CHECK_TIMEOUT", 3.0)
    t0 = time.monotonic()
    with pytest.raises(ValueError) as err:
        check_teacher_spec(UNKNOWN_HUB_ID)
    assert time.monotonic() - t0 < 15
    text = str(err.value)
    assert "\n" not in text and f"huggingface-cli download {UNKNOWN_HUB_ID}" in text
    # without network the hub is unreachable; with network the hub does not know the id
    assert "could not be reached" in text or "a model the hub knows" in text
