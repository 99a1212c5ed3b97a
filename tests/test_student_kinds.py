"""Every student kind: built from a teacher, called like one, saved bit-exactly, usable as a teacher."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

import students
from distill.core.protocol import SpeechModel, TeacherTargets
from distill.models.teacher import load_teacher
from students.registry import KINDS, StudentSpec, build_student
from students.shared import map_depth

from .conftest import save_tiny_model

KIND_NAMES = ["mimic", "distilhubert", "shared", "pruned"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("kind_teachers")
    return {"hubert": load_teacher(str(save_tiny_model("hubert", root / "hubert", num_hidden_layers=4))),
            "whisper": load_teacher(str(save_tiny_model("whisper", root / "whisper", encoder_layers=4)))}


def _wav():
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 16000, generator=g)
    wav[1, 9000:] = 0
    return wav, torch.tensor([16000, 9000])


def _spec(kind: str) -> StudentSpec:
    spec = StudentSpec(kind=kind)
    if kind == "pruned":
        spec.pruned.ordering = "last"  # no audio needed; the CoMFLP default is tested below
    return spec


def _perturb(model):
    with torch.no_grad():
        for p in model.stack.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def test_the_four_kinds_are_registered_with_transformers():
    from transformers import AutoConfig

    assert set(KIND_NAMES) <= set(KINDS)
    for kind in KIND_NAMES:
        cls = KINDS[kind]
        assert AutoConfig.for_model(cls.config_class.model_type).__class__ is cls.config_class


@pytest.mark.parametrize("arch", ["hubert", "whisper"])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_student_is_called_like_a_teacher_and_round_trips(teachers, arch, kind, tmp_path):
    teacher = teachers[arch]
    student = build_student(_spec(kind), teacher).eval()
    assert isinstance(student, SpeechModel) and isinstance(teacher, SpeechModel)
    _perturb(student)
    wav, lens = _wav()
    states, fl = student(wav, lens)
    t_states, t_fl = teacher(wav, lens)
    assert torch.equal(fl, t_fl) and len(states) == student.num_layers + 1
    assert all(s.shape == t_states[0].shape for s in states)
    assert torch.all(states[-1][1, fl[1]:] == 0) or kind != "mimic"  # mimic keeps padding at zero
    feats, states2, _ = student.features_and_states(wav, lens)
    torch.testing.assert_close(feats, teacher.frontend(wav, lens)[0])
    for a, b in zip(states, states2):
        assert torch.equal(a, b)
    info = student.info
    assert info.params_frontend == teacher.info.params_frontend and info.num_layers == student.num_layers
    # save / load round trip is bit-exact, and the folder is accepted as a teacher
    student.save_pretrained(tmp_path / "s")
    loaded = AutoModel.from_pretrained(tmp_path / "s").eval()
    assert type(loaded) is type(student)
    sd, ld = student.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    as_teacher = load_teacher(str(tmp_path / "s"))
    for a, b in zip(states, as_teacher(wav, lens)[0]):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in as_teacher.parameters())


@pytest.mark.parametrize("arch", ["hubert", "whisper"])
def test_distilhubert_copied_layers_reproduce_the_teacher_at_step_0(teachers, arch):
    teacher = teachers[arch]
    student = build_student(StudentSpec(kind="distilhubert"), teacher).eval()
    assert student.config.target_layers == [1, 3, 4]  # evenly spaced over 4 layers, the last included
    assert student.num_layers == 2 and student.config.layer_sources == [1, 2]
    wav, lens = _wav()
    s_states, _ = student(wav, lens)
    t_states, fl = teacher(wav, lens)
    for i in range(2):
        torch.testing.assert_close(s_states[i], t_states[i], rtol=0, atol=1e-6)
    # the last copied state is the teacher cut after layer 2 (Whisper: its final LayerNorm applied)
    cut = TeacherTargets(t_states, fl, teacher.final_norm).output_at(2)
    torch.testing.assert_close(s_states[2], cut, rtol=0, atol=1e-5)
    if arch == "hubert":
        torch.testing.assert_close(s_states[2], t_states[2], rtol=0, atol=1e-6)
    # heads: one per target layer, training-only unless exposed
    assert len(student.stack(*teacher.frontend(wav, lens))) == 3  # inference never runs the heads
    outputs = student.stack(*teacher.frontend(wav, lens), **student.step_kwargs(0))
    assert len(outputs) == 3 + 3
    layer = sum(p.numel() for p in teacher.stack.layers[0].parameters())
    assert student.info.params_stack == teacher.info.params_stack - 2 * layer  # heads are not shipped
    pairs = student.distill_pairs(outputs, TeacherTargets(t_states, fl))
    assert [p[0] for p in pairs] == ["head1_layer1", "head2_layer3", "head3_layer4"]
    exposed = build_student(StudentSpec(kind="distilhubert", sections={"distilhubert": students.distilhubert
                                                                      .DistilHubertOptions(expose_heads=True)}),
                            teacher).eval()
    assert len(exposed(wav, lens)[0]) == 3 + 3 and exposed.num_layers == 5


def test_twelve_layer_teacher_gets_heads_4_8_12(tmp_path):
    teacher = load_teacher(str(save_tiny_model("wav2vec2", tmp_path / "w", num_hidden_layers=12)))
    student = build_student(StudentSpec(kind="distilhubert"), teacher)
    assert student.config.target_layers == [4, 8, 12] and student.default_loss == "l1_cos"


@pytest.mark.parametrize("arch", ["hubert", "whisper"])
def test_shared_student_any_depth_and_sampled_training_depth(teachers, arch):
    teacher = teachers[arch]
    student = build_student(StudentSpec(kind="shared"), teacher).eval()
    c = student.config
    assert c.schedule == [0, 0, 0, 0] and c.layer_sources == [1] and student.max_depth == 4
    assert c.target_layers == [1, 2, 3, 4]
    layer = sum(p.numel() for p in teacher.stack.layers[0].parameters())
    assert student.info.params_stack == teacher.info.params_stack - 3 * layer  # one layer's worth, shared
    wav, lens = _wav()
    full, _ = student(wav, lens)
    assert len(full) == 5
    student.set_depth(2)
    half, _ = student(wav, lens)
    assert len(half) == 3 and student.num_layers == 2
    torch.testing.assert_close(half[1], full[1])  # the same layer, applied fewer times
    with pytest.raises(ValueError, match="depth"):
        student.set_depth(5)
    student.set_depth(4)
    depths = [student.step_kwargs(s)["depth"] for s in range(200)]
    assert set(depths) == {1, 2, 3, 4}  # uniform over 1..D
    assert depths == [student.step_kwargs(s)["depth"] for s in range(200)]  # same on every process
    outputs = student.stack(*teacher.frontend(wav, lens), depth=3)
    t_states, fl = teacher(wav, lens)
    (label, pred, target), = student.distill_pairs(outputs, TeacherTargets(t_states, fl, teacher.final_norm), depth=3)
    assert label == "depth3_layer3" and pred is outputs[3]
    grouped = build_student(StudentSpec(kind="shared", sections={"shared": students.shared.SharedOptions(
        groups=2, depth=6)}), teacher)
    assert grouped.config.schedule == [0, 0, 0, 1, 1, 1] and grouped.config.layer_sources == [1, 3]
    assert [map_depth(k, 6, 4) for k in range(1, 7)] == [1, 1, 2, 3, 3, 4]


def test_pruned_student_defaults_to_comflp_half_on_training_audio(teachers, sentences_corpus):
    teacher = teachers["hubert"]
    student = build_student(StudentSpec(kind="pruned"), teacher, data=[str(sentences_corpus)])
    c = student.config
    assert len(c.removed_layers) == 2 and student.num_layers == 2
    assert student.chosen["how"] == "comflp" and student.chosen["top"][0][0] == c.removed_layers
    kept = [i for i in range(1, 5) if i not in c.removed_layers]
    assert c.layer_sources == kept and c.target_layers == kept[:-1] + [4]  # the last onto the last
    given = build_student(StudentSpec(kind="pruned", sections={"pruned": students.pruned.PrunedOptions(
        removed=[2, 3])}), teacher).eval()
    wav, lens = _wav()
    # before distillation it is exactly the teacher without those layers
    ref = teacher.without_layers([2, 3])
    for a, b in zip(given(wav, lens)[0], ref(wav, lens)[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="training audio"):
        build_student(StudentSpec(kind="pruned"), teacher)


def test_unknown_kind_and_mimic_fields_elsewhere_are_clear_errors():
    from distill.core.config import load_config
    from distill.training.distillation import DistillConfig

    with pytest.raises(ValueError, match="unknown student kind"):
        load_config(DistillConfig, None, {"student.kind": "nope"})
    with pytest.raises(ValueError, match="unknown config field"):
        load_config(DistillConfig, None, {"student.shared.block_type": "mlp"})
    cfg = load_config(DistillConfig, None, {"student.kind": "shared", "student.shared.groups": 2})
    assert cfg.student.options.groups == 2
    from distill.core.config import to_dict

    saved = to_dict(cfg)["student"]
    assert saved["kind"] == "shared" and saved["shared"]["groups"] == 2 and "mimic" not in saved


def test_students_made_of_transformer_layers_need_such_a_teacher(teachers, tmp_path):
    mimic = build_student(StudentSpec(kind="mimic"), teachers["whisper"])
    mimic.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="copies the teacher's own transformer layers"):
        build_student(StudentSpec(kind="shared"), load_teacher(str(tmp_path / "m")))
