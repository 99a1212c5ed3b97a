"""Structured pruning with distillation (DPHuBERT-style): gates, the Lagrangian, slicing, two phases, export."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from distill.cli import main
from distill.core.protocol import count_params
from distill.models.teacher import load_teacher
from students import StudentSpec, build_student
from students.hard_concrete import HardConcreteGate
from students.layer_widths import slice_layer
from students.structured import StructuredOptions, StructuredStudent

from .conftest import save_tiny_model
from .procs import launch

ARCHS = ["whisper", "hubert", "wav2vec2", "data2vec-audio", "wavlm"]
ALL_UNITS = ["heads", "ffn", "attention_layers", "ffn_layers"]


def _units(arch: str) -> list[str]:
    return ["ffn", "ffn_layers"] if arch == "wavlm" else ALL_UNITS


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured_teachers")
    return {arch: load_teacher(str(save_tiny_model(arch, root / arch))) for arch in ARCHS}


def _gated(teacher, units, **options) -> StructuredStudent:
    options = {"target": 0.9, **options}  # the tiny models' frontends are a third or more of them
    spec = StudentSpec(kind="structured", sections={"structured": StructuredOptions(units=units, **options)})
    return build_student(spec, teacher).eval()


def _set_gates(student, fill) -> None:
    with torch.no_grad():
        for layer in student.stack.gates:
            for gate in layer.groups().values():
                gate.log_alpha.copy_(fill(gate.n))


def test_hard_concrete_probability_and_samples():
    gate = HardConcreteGate(4000, init_log_alpha=0.0)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.linspace(-4, 4, 4000))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([gate.sample(g) for _ in range(200)])
    assert float(draws.min()) == 0.0 and float(draws.max()) == 1.0
    # the analytic open probability matches the share of non-zero draws, unit by unit (in bands)
    empirical = (draws > 0).float().mean(0)
    assert torch.allclose(empirical.view(40, 100).mean(1), gate.prob_open().detach().view(40, 100).mean(1), atol=0.02)
    # the same generator seed gives the same gates; deterministic gates keep round(E[L0]) units, the most open
    assert torch.equal(gate.sample(torch.Generator().manual_seed(3)), gate.sample(torch.Generator().manual_seed(3)))
    fixed = gate.deterministic()
    kept = int((fixed > 0).sum())
    assert abs(kept - float(gate.expected_l0())) <= 1
    assert bool((fixed[-kept:] > 0).all()) and bool((fixed[: 4000 - kept] == 0).all())


@pytest.mark.parametrize("arch", ARCHS)
def test_expected_parameters_equal_a_direct_count(teachers, arch):
    teacher = teachers[arch]
    student = _gated(teacher, _units(arch))
    student.config.target = 1.0  # the budget never binds: the fixed gates are the hard pattern below
    # gates wide open: the expected size is the teacher's own
    _set_gates(student, lambda n: torch.full((n,), 30.0))
    assert float(student.stack.expected_params()) == pytest.approx(teacher.info.params_total, rel=1e-6)
    # hard 0/1 gates (a random pattern): the expectation is exactly the count of the model without the closed units
    gen = torch.Generator().manual_seed(1)
    _set_gates(student, lambda n: torch.where(torch.rand(n, generator=gen) < 0.5, -30.0, 30.0))
    work = copy.deepcopy(student)
    for layer, v in zip(work.stack.inner.layers, work.stack.deterministic()):
        att, ffn_layer = v.get("attention"), v.get("ffn_layer")
        slice_layer(layer, arch, v.get("heads"), v.get("ffn"), 1.0 if att is None else float(att[0]),
                    1.0 if ffn_layer is None else float(ffn_layer[0]))
    direct = count_params(work.frontend) + count_params(work.stack.inner)
    assert float(student.stack.expected_params()) == pytest.approx(direct, rel=1e-5) and direct < teacher.info.params_total
    # fixed gates meet the budget exactly (to one unit), closed units filling it at gate value 0
    student.config.target = (direct / teacher.info.params_total + 1.0) / 2
    sliced = student.sliced()
    budget = student.config.target * teacher.info.params_total
    largest_unit = max(c for costs in student.stack._costs for c in costs.values())
    assert budget - largest_unit <= sliced.info.params_total <= budget


@pytest.mark.parametrize("arch", ARCHS)
def test_sliced_model_equals_the_gated_one_at_deterministic_gates(teachers, arch):
    student = _gated(teachers[arch], _units(arch))
    gen = torch.Generator().manual_seed(2)
    _set_gates(student, lambda n: torch.randn(n, generator=gen) * 2.5)
    sliced = student.sliced()
    widths = sliced.layer_widths()
    assert any(w["ffn"] < 64 for w in widths)
    if arch != "wavlm":
        assert len({w["heads"] for w in widths}) > 1 or any(w["heads"] < 2 for w in widths)
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        gated_states, _ = student(wav, lengths)
        sliced_states, _ = sliced(wav, lengths)
    assert len(gated_states) == len(sliced_states) == 4
    for a, b in zip(gated_states, sliced_states):
        torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b[1, :30], a[1, :30], atol=1e-5, rtol=1e-4)


def test_a_target_below_the_unprunable_parts_is_refused(teachers):
    with pytest.raises(ValueError, match="no gate removes"):
        _gated(teachers["whisper"], ALL_UNITS, target=0.5)


def test_wavlm_heads_are_refused_with_a_clear_message(teachers):
    with pytest.raises(ValueError, match="wavlm attention heads cannot be pruned"):
        _gated(teachers["wavlm"], ["heads", "ffn"])


def test_lagrangian_reaches_the_target_within_a_few_hundred_steps(tmp_path):
    from distill.training.loop import TrainConfig, prepare_trainable

    class _NoPrepare:
        def prepare(self, model, optimizer):
            return model, optimizer

    # 8 heads and 128 FFN units a layer: enough units for rounding to the kept count to be small
    teacher = load_teacher(str(save_tiny_model("hubert", tmp_path / "h", num_attention_heads=8, intermediate_size=128)))
    student = _gated(teacher, ALL_UNITS, target=0.5)  # reg_lr 0.02, the recipe's
    student.config.sparsity_warmup = 300
    stack = student.stack
    model, optimizer, scheduler = prepare_trainable(_NoPrepare(), stack, TrainConfig(lr=1e-3, max_steps=800,
                                                                                      warmup_steps=10))
    assert any(group["initial_lr"] == 0.02 and group["weight_decay"] == 0.0 for group in optimizer.param_groups)
    fractions = []
    for step in range(800):
        term, expected, target = stack.lagrangian(step)
        optimizer.zero_grad()
        term.backward()
        optimizer.step()
        scheduler.step()
        fractions.append(expected)
    assert fractions[0] > 0.95  # starts at the teacher's size
    # the Lagrangian alone (no distillation loss holding useful units open) overshoots a little
    assert fractions[-1] == pytest.approx(0.5, abs=0.05)
    assert max(abs(f - 0.5) for f in fractions[-100:]) < 0.05  # settled, not passing through
    assert float(stack.lambdas[0]) != 0.0  # the multipliers moved (by ascent)
    sliced = student.sliced()
    assert sliced.info.params_total / student.config.teacher_params == pytest.approx(0.5, rel=0.02)
    # the gates and multipliers keep their own constant rate; the weights' schedule decays to 0
    assert optimizer.param_groups[1]["lr"] == 0.02 and optimizer.param_groups[0]["lr"] < 1e-5


def _distill_args(teacher, data, out, *extra):
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--student.kind", "structured", "--student.structured.target", "0.85",
            "--student.structured.reg_lr", "0.2", "--student.structured.final_steps", "4",
            "--train.max_steps", "60", "--train.lr", "2e-3", "--train.warmup_steps", "2",
            "--train.batch_seconds", "3", "--train.crop_seconds", "1.5", "--train.valid_fraction", "0.2",
            "--train.eval_every", "20", "--train.save_every", "20", "--train.log_every", "5", *extra]


@pytest.fixture(scope="module")
def two_phase_run(tiny_whisper_dir, sentences_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("structured_run") / "run"
    assert main(_distill_args(tiny_whisper_dir, sentences_corpus, out)) == 0
    return out


def test_two_phases_prune_then_distil_the_sliced_student(two_phase_run, tiny_whisper_dir):
    from transformers import AutoModel

    out = two_phase_run
    rows = [json.loads(line) for line in (out / "prune" / "metrics.jsonl").read_text().splitlines()]
    fractions = [r["expected_fraction"] for r in rows if "expected_fraction" in r]
    targets = [r["target_fraction"] for r in rows if "target_fraction" in r]
    # the random tiny Whisper's frontend (a 1500-position table) is 70 % of it: 0.85 halves the stack
    assert targets[0] > 0.95 and targets[-1] == pytest.approx(0.85)
    assert fractions[0] > 0.98 and fractions[-1] < 0.94  # pulled down towards the target in 60 steps
    gated = AutoModel.from_pretrained(out / "prune" / "last")
    assert gated.config.gated
    student = AutoModel.from_pretrained(out / "best")
    assert isinstance(student, StructuredStudent) and not student.config.gated
    teacher_total = load_teacher(str(tiny_whisper_dir)).info.params_total
    assert student.info.params_total / teacher_total == pytest.approx(0.85, rel=0.02)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stages"]["prune"]["steps"] == 60
    assert summary["seconds_all_stages"] == pytest.approx(summary["seconds"] + summary["stages"]["prune"]["seconds"])
    assert summary["student"]["kind"] == "structured"
    import yaml

    final = yaml.safe_load((out / "config.yaml").read_text())["student"]["structured"]
    assert final["pruned_from"] == str(out / "prune" / "last")
    assert yaml.safe_load((out / "prune" / "config.yaml").read_text())["student"]["structured"]["sparsity_warmup"] == 36
    # the final phase started from the sliced gated student: its step-0 weights are that slice
    assert student.layer_widths() == gated.sliced().layer_widths()


def test_a_second_run_into_the_same_folder_is_refused(two_phase_run, tiny_whisper_dir, sentences_corpus, capsys):
    before = (two_phase_run / "prune" / "last" / "model.safetensors").read_bytes()
    assert main(_distill_args(tiny_whisper_dir, sentences_corpus, two_phase_run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (two_phase_run / "prune" / "last" / "model.safetensors").read_bytes() == before


def test_export_with_its_code_loads_without_stackdistill(two_phase_run, tmp_path):
    from distill.deploy.export import export_student, load_student

    student = load_student(two_phase_run)
    assert not student.uniform()
    folder = export_student(student, tmp_path / "exported")
    assert json.loads((folder / "config.json").read_text())["auto_map"]
    card = (folder / "README.md").read_text()
    assert "heads per layer" in card and str([w["heads"] for w in student.layer_widths()]) in card
    torch.manual_seed(0)
    wav = torch.randn(1, 24000)
    with torch.no_grad():
        states, _ = student(wav)
    torch.save(wav, tmp_path / "wav.pt")
    code = f"""
import sys, torch
from transformers import AutoModel
m = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
wav = torch.load({str(tmp_path / 'wav.pt')!r}, weights_only=True)
with torch.no_grad():
    states, _ = m(wav)
assert not any(k.startswith(('students', 'distill')) for k in sys.modules), 'stackdistill imported'
torch.save(torch.stack(states), {str(tmp_path / 'out.pt')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), torch.stack(states))


def test_uniform_widths_export_as_a_plain_folder(teachers, tmp_path):
    from transformers import AutoModel

    from distill.deploy.export import export_student

    student = _gated(teachers["hubert"], ["ffn_layers"], target=1.0)
    _set_gates(student, lambda n: torch.full((n,), 30.0))  # every sublayer kept: the teacher's sizes
    sliced = student.sliced()
    assert sliced.uniform()
    folder = export_student(sliced, tmp_path / "plain")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hubert" and "auto_map" not in config
    model = AutoModel.from_pretrained(folder).eval()
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        ours, _ = sliced(wav)
        theirs = model(wav, output_hidden_states=True).hidden_states
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_onnx_export_matches(two_phase_run, tmp_path):
    from distill.deploy.export import export_onnx_folder

    folder = export_onnx_folder(str(two_phase_run / "best"), tmp_path / "onnx")
    check = json.loads((folder / "check.json").read_text())
    assert check["max_abs_diff"] <= 1e-3


@pytest.mark.slow
def test_two_processes_equal_one(tiny_whisper_dir, sentences_corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--train.max_steps", "6", "--student.structured.final_steps", "2", "--train.eval_every", "3",
              "--train.save_every", "3", "--train.log_every", "1"]
    assert main(_distill_args(tiny_whisper_dir, sentences_corpus, one, "--train.grad_accum", "2", *common)) == 0
    launch(_distill_args(tiny_whisper_dir, sentences_corpus, two, *common))
    from safetensors.torch import load_file

    for phase in ("prune", "."):
        a = [json.loads(x) for x in (one / phase / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (two / phase / "metrics.jsonl").read_text().splitlines()]
        la = {r["step"]: r["train_loss"] for r in a if "train_loss" in r}
        lb = {r["step"]: r["train_loss"] for r in b if "train_loss" in r}
        assert la.keys() == lb.keys() and la
        for step in la:
            assert lb[step] == pytest.approx(la[step], rel=1e-4), (phase, step)
        w1, w2 = load_file(one / phase / "last" / "model.safetensors"), load_file(two / phase / "last" / "model.safetensors")
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=1e-4, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["whisper-tiny.en", "whisper-base"])
def test_real_whisper_teachers_gate_slice_and_factorise(name, real_clip, sentences_corpus):
    """The real pretrained teachers: a sliced quarter-size structured student equals its gated form on real
    speech, and a low-rank half-size copy (no training) keeps more of the teacher than a random basis."""
    from distill.data.audio import load_audio
    from students.lowrank import LowRankOptions

    teacher = load_teacher(name)
    total = teacher.info.params_total
    student = _gated(teacher, ALL_UNITS, target=0.25)
    gen = torch.Generator().manual_seed(0)
    _set_gates(student, lambda n: torch.randn(n, generator=gen) * 3 + 1)
    sliced = student.sliced()
    assert sliced.info.params_total == pytest.approx(0.25 * total, rel=0.02)
    wav = load_audio(real_clip)[: 16000 * 4][None]
    with torch.no_grad():
        gated_states, _ = student(wav)
        sliced_states, _ = sliced(wav)
        teacher_states, _ = teacher(wav)
    for a, b in zip(gated_states, sliced_states):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-3)
    low = build_student(StudentSpec(kind="lowrank", sections={"lowrank": LowRankOptions(target=0.5)}), teacher,
                        data=[str(sentences_corpus)]).eval()
    assert 0.48 * total <= low.info.params_total <= 0.5 * total
    from .test_lowrank import random_basis_copy

    with torch.no_grad():
        low_states, _ = low(wav)
        rand_states, _ = random_basis_copy(low)(wav)
    cos = lambda s: float(torch.nn.functional.cosine_similarity(s[-1], teacher_states[-1], dim=-1).mean())
    # calibrated on a few synthetic sentences, measured on a real recording: the principal basis keeps
    # much more of the teacher than a random one of the same ranks (untrained, half the size: not close)
    assert cos(low_states) > cos(rand_states) + 0.1


def test_a_run_killed_in_its_final_stage_resumes_to_the_same_student(tiny_whisper_dir, sentences_corpus, tmp_path):
    import shutil

    from safetensors.torch import load_file

    args = lambda out, *extra: _distill_args(tiny_whisper_dir, sentences_corpus, out, "--train.max_steps", "6",
                                              "--student.structured.final_steps", "4", "--train.save_every", "2",
                                              "--train.eval_every", "2", "--train.keep_checkpoints", "3", *extra)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(args(whole)) == 0
    assert main(args(cut)) == 0
    # as if killed after the final stage's step 2: its later checkpoint, exports and summary never written
    shutil.rmtree(cut / "checkpoints" / "step_4")
    for name in ("best", "last", "summary.json"):
        (shutil.rmtree if (cut / name).is_dir() else (cut / name).unlink)(cut / name)
    assert main(args(cut, "--train.resume", "true")) == 0
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["stages"]["prune"]["steps"] == 6
    a, b = load_file(whole / "last" / "model.safetensors"), load_file(cut / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)
