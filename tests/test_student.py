"""Mimic students: built from a teacher, called like one, saved and loaded bit-exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import students
from distill.deploy.export import export_student
from distill.models.teacher import load_teacher
from students.registry import StudentSpec, build_student

from .conftest import save_tiny_model


@pytest.fixture(scope="module")
def teacher(tiny_whisper_dir):
    return load_teacher(str(tiny_whisper_dir))


def _wav():
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 16000, generator=g)
    wav[1, 9000:] = 0
    return wav, torch.tensor([16000, 9000])


def test_student_called_like_teacher(teacher):
    student = students.mimic_from_teacher(teacher)
    assert student.config.target_layers == [1, 3]  # middle of 3 layers, then the last
    wav, lens = _wav()
    s_states, s_fl = student(wav, lens)
    t_states, t_fl = teacher(wav, lens)
    assert torch.equal(s_fl, t_fl)
    assert len(s_states) == 3 and s_states[0].shape == t_states[0].shape
    # the copied frontend gives exactly the teacher's frontend output
    torch.testing.assert_close(s_states[0], teacher.frontend(wav, lens)[0])
    assert student.info.params_frontend == teacher.info.params_frontend
    # two MLP blocks of width 64 on D=32: 2 * (32*64+64 + 2*64 + 64*32+32)
    assert student.info.params_stack == 2 * (32 * 64 + 64 + 2 * 64 + 64 * 32 + 32)
    assert torch.all(s_states[2][1, s_fl[1]:] == 0)  # padding stays zero


def test_frontend_frozen_by_default_and_trainable_on_request(teacher):
    frozen = build_student(StudentSpec(), teacher)
    assert not any(p.requires_grad for p in frozen.frontend.parameters())
    assert all(p.requires_grad for p in frozen.stack.parameters())
    trainable = build_student(StudentSpec(train_frontend=True), teacher)
    named = dict(trainable.frontend.named_parameters())
    assert not named.pop("embed_positions.weight").requires_grad  # Whisper's sinusoids stay fixed
    assert all(p.requires_grad for p in named.values())


@pytest.mark.parametrize("block_type", ["mlp", "transformer"])
def test_save_pretrained_round_trip_is_bit_exact(teacher, tmp_path, block_type):
    student = students.mimic_from_teacher(teacher, target_layers=[2, 3], block_type=block_type, num_heads=2)
    with torch.no_grad():  # make the weights non-default so the test sees a real copy
        for p in student.stack.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    student.save_pretrained(tmp_path / "s")
    loaded = AutoModel.from_pretrained(tmp_path / "s")
    assert type(loaded) is students.MimicStudent
    a, b = student.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    wav, lens = _wav()
    student.eval()
    loaded.eval()
    for x, y in zip(student(wav, lens)[0], loaded(wav, lens)[0]):
        assert torch.equal(x, y)


def test_export_folder_loads_as_a_teacher(teacher, tmp_path):
    student = students.mimic_from_teacher(teacher)
    out = export_student(student, tmp_path / "export")
    assert {"config.json", "model.safetensors", "README.md", "stackdistill_mimic.py"} <= {p.name for p in out.iterdir()}
    assert "mimic" in (out / "README.md").read_text()
    load_file(out / "model.safetensors")  # safetensors, not a pickle
    as_teacher = load_teacher(str(out))
    assert as_teacher.num_layers == 2 and not any(p.requires_grad for p in as_teacher.parameters())


def test_ssl_teacher_frontend_is_reused(tmp_path):
    teacher = load_teacher(str(save_tiny_model("hubert", tmp_path / "h")))
    student = students.mimic_from_teacher(teacher, target_layers=[3])
    student.save_pretrained(tmp_path / "s")
    loaded = AutoModel.from_pretrained(tmp_path / "s")
    wav, lens = _wav()
    torch.testing.assert_close(loaded(wav, lens)[0][0], teacher.frontend(wav, lens)[0])


def test_bad_targets_are_clear_errors(teacher):
    with pytest.raises(ValueError, match="target_layers"):
        students.mimic_from_teacher(teacher, target_layers=[3, 1])
    with pytest.raises(ValueError, match="target_layers"):
        students.mimic_from_teacher(teacher, target_layers=[5])


def test_mimic_transformer_block_is_torchs_pre_ln_encoder_layer():
    """Same parameters drawn in the same order (a seed gives the weights it gave before), the same
    state-dict names, and the same output as ``nn.TransformerEncoderLayer(norm_first=True)`` on the
    valid frames of a padded batch, in training (its plain path) and in inference (its fused path)."""
    from torch import nn

    from distill.core.protocol import lengths_to_mask
    from students.blocks import MimicTransformer

    torch.manual_seed(3)
    ours = MimicTransformer(32, hidden=48, num_heads=4)
    torch.manual_seed(3)
    ref = nn.TransformerEncoderLayer(32, 4, dim_feedforward=48, dropout=0.0, batch_first=True, norm_first=True)
    theirs = ref.state_dict()
    assert list(ours.layer.state_dict()) == list(theirs)
    for name, tensor in ours.layer.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    x, lengths = torch.randn(3, 20, 32), torch.tensor([20, 13, 5])
    valid = lengths_to_mask(lengths, 20)
    ref.train()
    for mode in ("train", "inference"):
        with torch.inference_mode(mode == "inference"):
            if mode == "inference":
                ref.eval()
            expected = ref(x, src_key_padding_mask=~valid)
            got = ours(x, lengths)
        torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    torch.manual_seed(4)
    other = nn.TransformerEncoderLayer(32, 4, dim_feedforward=48, dropout=0.0, batch_first=True, norm_first=True)
    ours.layer.load_state_dict(other.state_dict())  # a checkpoint of the torch layer loads as it is
    with torch.no_grad():
        torch.testing.assert_close(ours(x, lengths)[valid], other.train()(x, src_key_padding_mask=~valid)[valid],
                                   rtol=1e-5, atol=1e-5)
