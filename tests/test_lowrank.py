"""Low-rank factorisation from the principal components of each map's inputs (LiteASR-style)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from distill.cli import main
from distill.data.corpus import analysis_batches
from distill.models.teacher import load_teacher
from students import StudentSpec, build_student
from students.lowrank import InputStatistics, LowRankOptions, LowRankStudent, factorise_linear

from .conftest import save_tiny_model

ARCHS = ["whisper", "hubert", "wav2vec2", "data2vec-audio", "wavlm"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowrank_teachers")
    return {arch: load_teacher(str(save_tiny_model(arch, root / arch, hidden_size=64, intermediate_size=128,
                                                   d_model=64, encoder_ffn_dim=128)))
            for arch in ARCHS}


def _orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@torch.no_grad()
def random_basis_copy(student: LowRankStudent, seed: int = 3) -> LowRankStudent:
    """``student`` with each factorised map's basis replaced by a random one of the same rank."""
    rand = LowRankStudent(student.config).eval()
    rand.load_state_dict(student.state_dict())
    own = dict(student.named_modules())
    for name, module in rand.named_modules():
        if hasattr(module, "down") and hasattr(module, "up"):
            dense = own[name].weight  # the same effective map, projected on another basis
            q = _orthonormal(module.in_features, seed)[:, : module.rank].float()
            module.down.weight.copy_(q.T)
            module.up.weight.copy_(dense @ q)
    return rand


def test_full_rank_equals_the_layer_and_a_lower_rank_is_exact_on_its_subspace():
    torch.manual_seed(0)
    lin = nn.Linear(24, 10)
    mean, vectors = torch.randn(24, dtype=torch.float64), _orthonormal(24, 1)
    x = torch.randn(7, 24)
    torch.testing.assert_close(factorise_linear(lin, mean, vectors, 24)(x), lin(x), atol=1e-5, rtol=1e-5)
    low = factorise_linear(lin, mean, vectors, 5)
    assert low.down.weight.shape == (5, 24) and low.up.weight.shape == (10, 5)
    inside = mean.float() + torch.randn(7, 5) @ vectors[:, :5].T.float()  # mean + a mix of the kept directions
    torch.testing.assert_close(low(inside), lin(inside), atol=1e-5, rtol=1e-5)
    outside = mean.float() + torch.randn(7, 19) @ vectors[:, 5:].T.float()  # only dropped directions: seen as mean
    torch.testing.assert_close(low(outside), lin(mean.float()).expand(7, -1), atol=1e-5, rtol=1e-5)


def test_input_statistics_count_valid_frames_only(teachers, sentences_corpus):
    teacher = teachers["hubert"]
    student = build_student(StudentSpec(kind="lowrank", sections={"lowrank": LowRankOptions(target=0.0, variance=1.0)}), teacher,
                            data=[str(sentences_corpus)]).eval()
    loader, _ = analysis_batches([str(sentences_corpus)], 1.0, 8.0, 12, 0)
    batches = list(loader)
    assert not student.config.ranks  # all variance kept: nothing factorised, a copy of the teacher
    stats = InputStatistics(student, "hubert")
    frames = stats.collect(batches)
    expected = 0
    with torch.no_grad():
        for b in batches:
            expected += int(teacher.frontend(b["wav"], b["lengths"])[1].sum())
    assert frames == expected
    assert all(n == expected for n in stats.counts.values())
    # the mean of layer 1's FFN input equals one computed directly from the teacher's own activations
    captured = []
    ffn_in = teacher.stack.layers[0].feed_forward.intermediate_dense
    handle = ffn_in.register_forward_pre_hook(lambda m, i: captured.append(i[0].detach()))
    with torch.no_grad():
        lengths = []
        for b in batches:
            lengths.append(teacher(b["wav"], b["lengths"])[1])
    handle.remove()
    valid = torch.cat([x[torch.arange(x.shape[1])[None] < fl[:, None]] for x, fl in zip(captured, lengths)])
    mean, values, _ = stats.spectrum("0.ffn_in")
    torch.testing.assert_close(mean.float(), valid.mean(0), atol=1e-4, rtol=1e-4)
    assert bool((values[:-1] >= values[1:]).all())  # leading components first


@pytest.mark.parametrize("arch", ARCHS)
def test_target_is_met_and_the_principal_basis_beats_a_random_one(teachers, sentences_corpus, arch):
    teacher = teachers[arch]
    student = build_student(StudentSpec(kind="lowrank", sections={"lowrank": LowRankOptions(target=0.85)}), teacher,
                            data=[str(sentences_corpus)]).eval()
    total = teacher.info.params_total
    assert student.config.ranks and 0.83 * total <= student.info.params_total <= 0.85 * total
    if arch == "wavlm":  # attention weights are read directly by its fused attention: FFN maps only
        assert all(k.endswith(("ffn_in", "ffn_out")) for k in student.config.ranks)
    loader, _ = analysis_batches([str(sentences_corpus)], 2.0, 40.0, 64, 0)
    b = next(iter(loader))
    with torch.no_grad():
        ours, _ = student(b["wav"], b["lengths"])
        ref, fl = teacher(b["wav"], b["lengths"])
        theirs, _ = random_basis_copy(student)(b["wav"], b["lengths"])
    mask = torch.arange(fl.max())[None] < fl[:, None]
    err = lambda s: float(((s[-1] - ref[-1]) ** 2)[mask].mean() / (ref[-1][mask] ** 2).mean())
    assert err(ours) < 0.5 * err(theirs)


def test_distilled_low_rank_student_exports_with_its_code(tiny_whisper_dir, sentences_corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["distill", "--teacher", str(tiny_whisper_dir), "--data", str(sentences_corpus), "--out", str(out),
                 "--student.kind", "lowrank", "--student.lowrank.target", "0.9", "--train.max_steps", "4",
                 "--train.batch_seconds", "3", "--train.crop_seconds", "1.5", "--train.eval_every", "2",
                 "--train.save_every", "2"]) == 0
    from distill.deploy.export import export_onnx_folder, export_student, load_student

    student = load_student(out)
    assert isinstance(student, LowRankStudent) and student.config.ranks
    folder = export_student(student, tmp_path / "exported")
    assert "ranks" in (folder / "README.md").read_text()
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    torch.save(wav, tmp_path / "wav.pt")
    with torch.no_grad():
        states, _ = student(wav)
    code = f"""
import sys, torch
from transformers import AutoModel
m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    states, _ = m(torch.load({str(tmp_path / 'wav.pt')!r}, weights_only=True))
assert not any(k.startswith(('students', 'distill')) for k in sys.modules)
torch.save(torch.stack(states), {str(tmp_path / 'out.pt')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), torch.stack(states))
    check = json.loads((export_onnx_folder(str(out / "best"), tmp_path / "onnx") / "check.json").read_text())
    assert check["max_abs_diff"] <= 1e-3
