"""The real-speech checks: a student's reconstruction of its teacher, the teacher's WER on real prompts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.analysis.reconstruction import reconstruction
from distill.core.protocol import lengths_to_mask
from distill.jobs.real_speech import teacher_wer
from distill.models.teacher import load_teacher
from students.registry import StudentSpec, build_student
from tasks.corpora.prompts import manifest_rows

from .conftest import save_tiny_model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_teacher(str(save_tiny_model("whisper", tmp_path_factory.mktemp("rs") / "w", encoder_layers=4)))


def _batches():
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 16000, generator=g)
    wav[1, 7000:] = 0
    return [{"wav": wav, "lengths": torch.tensor([16000, 7000])}, {"wav": None}]  # an all-unreadable batch too


def test_reconstruction_equals_a_direct_computation_over_valid_frames(teacher):
    student = build_student(StudentSpec(kind="mimic"), teacher).eval()
    with torch.no_grad():
        for p in student.stack.parameters():
            p.add_(0.05 * torch.randn_like(p))
    result = reconstruction({"s": student}, teacher, _batches(), progress=False)["s"]
    (batch, _) = _batches()
    with torch.no_grad():
        s_states, _ = student(batch["wav"], batch["lengths"])
        t_states, fl = teacher(batch["wav"], batch["lengths"])
    mask = lengths_to_mask(fl, t_states[0].shape[1])
    targets = student.config.target_layers
    assert set(result) == {f"layer{m}" for m in targets} | {"all"}
    for k, m in enumerate(targets, start=1):
        cos = F.cosine_similarity(s_states[k], t_states[m], dim=-1)[mask]
        l1 = (s_states[k] - t_states[m]).abs().mean(-1)[mask]
        assert result[f"layer{m}"]["cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
        assert result[f"layer{m}"]["l1"] == pytest.approx(float(l1.mean()), rel=1e-5)
        assert result[f"layer{m}"]["frames"] == int(fl.sum()) < 2 * t_states[0].shape[1]  # padding left out
    assert result["all"]["cosine"] == pytest.approx(sum(result[f"layer{m}"]["cosine"] for m in targets) / len(targets))


def test_a_copy_of_the_teacher_reconstructs_it_exactly(teacher):
    spec = StudentSpec(kind="pruned")
    spec.pruned.ordering, spec.pruned.removed = "last", [4]
    student = build_student(spec, teacher).eval()  # layers 1-3 are the teacher's own; its last regresses layer 4
    result = reconstruction({"s": student}, teacher, _batches(), progress=False)["s"]
    assert student.config.target_layers == [1, 2, 4]
    for m in (1, 2):
        assert result[f"layer{m}"]["cosine"] == pytest.approx(1.0, abs=1e-6) and result[f"layer{m}"]["l1"] < 1e-6
    assert result["layer4"]["l1"] > 1e-3  # layer 3 is not layer 4


def test_wer_is_not_measured_without_a_decoder(teacher, prompts_corpus):
    wer = teacher_wer(teacher, manifest_rows(prompts_corpus, "heldout", "en"))
    assert wer == {"measured": False, "reason": wer["reason"]} and "CTranslate2" in wer["reason"]


@pytest.mark.slow
def test_tiny_en_is_sound_on_held_out_real_prompts(prompts_corpus):
    rows = manifest_rows(prompts_corpus, "heldout", "en")
    assert rows, "the fixture holds held-out English prompts"
    wer = teacher_wer(load_teacher("whisper-tiny.en"), rows)
    assert wer["measured"] and wer["utterances"] == len([r for r in rows if r["seconds"] <= 30])
    assert wer["errors"] == sum(t["errors"] for t in wer["transcripts"])
    assert wer["wer"] < 0.3, wer["transcripts"]  # 9.3 % on all 95 held-out English prompts (2026-12-06)
