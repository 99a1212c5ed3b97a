"""ONNX export parity on real speech (padded batches), and the bench command's JSON."""

from __future__ import annotations

import json

import pytest

import students
from distill.data.audio import real_speech_batch
from distill.deploy.export import ExportConfig, export
from distill.deploy.onnx_export import check_onnx, export_onnx
from distill.jobs.bench_run import BenchCommandConfig, run_bench
from distill.models.teacher import load_teacher

from .conftest import save_tiny_model


@pytest.fixture(scope="module")
def tiny_hubert_dir(tmp_path_factory):
    return save_tiny_model("hubert", tmp_path_factory.mktemp("tiny_hubert"))


@pytest.mark.parametrize("kind", ["student", "transformer student", "pruned"])
def test_onnx_matches_pytorch_per_utterance_on_padded_real_speech(kind, tiny_whisper_dir, tmp_path):
    teacher = load_teacher(str(tiny_whisper_dir))
    if kind == "pruned":
        model = teacher.without_layers([2])
    else:  # the transformer blocks' attention must not fix the traced batch x heads (it did until 2026-12-06)
        block = "transformer" if kind.startswith("transformer") else "mlp"
        model = students.mimic_from_teacher(teacher, block_type=block).as_teacher()
    path = export_onnx(model, tmp_path / "m.onnx")
    wav, lengths, _ = real_speech_batch()  # 3.0 s, 1.2 s, 2.1 s: two of three utterances padded
    assert len(set(lengths.tolist())) == 3
    check = check_onnx(model, path, wav, lengths, rounds=1)
    assert check["max_abs_diff"] < 1e-4 and check["layers"] == model.num_layers
    assert check["torch_seconds_per_audio_second"] > 0 and check["onnx_seconds_per_audio_second"] > 0
    # another batch size and length than the export was traced with
    one, n = wav[1:2, : int(lengths[1])], lengths[1:2]
    assert check_onnx(model, path, one, n, rounds=1)["max_abs_diff"] < 1e-4


def test_onnx_of_a_group_norm_cnn_teacher_handles_padding(tiny_hubert_dir, tmp_path):
    model = load_teacher(str(tiny_hubert_dir))
    assert model.frontend.per_utterance_cnn  # base-model CNN: group norm over each utterance's time
    path = export_onnx(model, tmp_path / "h.onnx")
    check = check_onnx(model, path, *real_speech_batch()[:2], rounds=1)
    assert check["max_abs_diff"] < 1e-4


def test_export_command_writes_onnx_check_and_card(tiny_whisper_dir, tmp_path):
    out = export(ExportConfig(model=str(tiny_whisper_dir), out=str(tmp_path / "onnx"), format="onnx"))
    check = json.loads((out / "check.json").read_text())
    assert (out / "model.onnx").stat().st_size > 0 and check["max_abs_diff"] < 1e-4
    card = (out / "README.md").read_text()
    assert "onnxruntime" in card and "max abs difference" in card


def test_bench_reports_every_field_for_every_model(tiny_whisper_dir, tmp_path):
    teacher = load_teacher(str(tiny_whisper_dir))
    folder = tmp_path / "student"
    students.mimic_from_teacher(teacher).save_pretrained(folder)
    res = run_bench(BenchCommandConfig(models=[str(tiny_whisper_dir), str(folder)], out=str(tmp_path / "b"),
                                       seconds=[1.0, 2.0], batch_sizes=[1, 2], rounds=1, warmup=1,
                                       memory_subprocess=False))
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(saved["models"]) == {tiny_whisper_dir.name, "student", "frontend"}
    assert "recorded speech" in saved["audio"]
    keys = {"1s_x1", "1s_x2", "2s_x1", "2s_x2"}
    for name, m in saved["models"].items():
        assert set(m["seconds_per_audio_second"]) == keys and set(m["peak_rss_mb"]) == keys
        assert all(v > 0 for v in m["seconds_per_audio_second"].values())
        for key, wall in m["wall_seconds"].items():  # both figures from the measured median batch time
            clip, batch = float(key.split("s_x")[0]), int(key.split("_x")[1])
            assert m["real_time_factor"][key] == pytest.approx(wall / clip)  # the batch's time / a clip's duration
            assert m["seconds_per_audio_second"][key] == pytest.approx(wall / (batch * clip))
        assert set(m["macs_per_audio_second"]) == {"1s", "2s"}
        assert m["params"]["total"] == m["params"]["frontend"] + m["params"]["stack"] + m["params"]["heads"]
    t, s, f = (saved["models"][k] for k in (tiny_whisper_dir.name, "student", "frontend"))
    # the frontend is part of every model: the floor of the MACs of both; the student (an MLP of two
    # linear maps a layer) adds exactly its weights once per frame (50 frames in 1 s): nothing missed
    assert f["macs_per_audio_second"]["1s"] < s["macs_per_audio_second"]["1s"] < t["macs_per_audio_second"]["1s"]
    student = load_teacher(str(folder))
    weights = sum(p.numel() for p in student.stack.parameters() if p.dim() == 2)
    assert s["macs_per_audio_second"]["1s"] - f["macs_per_audio_second"]["1s"] == 50 * weights
    # attention grows with the clip: the counter must see it (fused kernels hide it otherwise)
    assert t["macs_per_audio_second"]["2s"] > t["macs_per_audio_second"]["1s"]
    assert "| student |" in (tmp_path / "b" / "bench.md").read_text()
    assert res["models"].keys() == saved["models"].keys()


def test_peak_memory_in_a_fresh_process_grows_with_the_batch(tiny_whisper_dir):
    from distill.jobs.bench_run import peak_rss_in_fresh_process

    peaks = peak_rss_in_fresh_process(str(tiny_whisper_dir), [(2.0, 1), (20.0, 8)])
    assert peaks["20s_x8"] > peaks["2s_x1"] >= 0  # 80x the audio: activations the kernel counted
