"""A new student kind is one class plus one registration line; every kind trains through one loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from transformers import AutoModel

from distill.core.config import load_config, to_dict
from distill.core.frontends import build_frontend
from distill.deploy.export import export_student, load_student
from distill.training.distillation import DistillConfig, TrainConfig, distill
from students.base import StudentConfig, StudentModel
from students.registry import StudentSpec, register_student


@dataclass
class ToyOptions:
    gain: float = field(default=0.5, metadata={"help": "initial gain of the toy layer"})


class ToyConfig(StudentConfig):
    model_type = "stackdistill-test-toy"

    def __init__(self, hidden_size: int = 32, gain: float = 0.5, **kwargs):
        self.hidden_size, self.gain = hidden_size, gain
        super().__init__(**kwargs)


class ToyStack(nn.Module):
    def __init__(self, dim: int, gain: float):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim)])
        with torch.no_grad():
            self.layers[0].weight.mul_(gain)

    def forward(self, x, frame_lengths):
        return [x, self.layers[0](x)]


class ToyStudent(StudentModel):
    kind = "toy"
    config_class = ToyConfig
    options_class = ToyOptions

    def build_parts(self, config):
        return build_frontend(config.frontend_arch, config.frontend_config), ToyStack(config.hidden_size, config.gain)

    @classmethod
    def from_teacher(cls, teacher, options, context):
        f = teacher.frontend
        student = cls(ToyConfig(hidden_size=f.output_dim, gain=options.gain, frontend_arch=f.arch,
                                frontend_config=f.config.to_dict(), teacher_name=teacher.name,
                                teacher_num_layers=teacher.num_layers, target_layers=[teacher.num_layers]))
        student.frontend.load_state_dict(f.state_dict())
        return student


register_student(ToyStudent)  # the one registration line


def _cfg(teacher, data, out, spec: StudentSpec, steps: int = 24) -> DistillConfig:
    return DistillConfig(teacher=str(teacher), data=[str(data)], out=str(out), student=spec, train=TrainConfig(
        max_steps=steps, lr=3e-3, warmup_steps=2, batch_seconds=4.0, crop_seconds=1.5, valid_fraction=0.15,
        eval_every=steps // 2, save_every=steps, log_every=4, seed=0))


def _train_losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def test_throwaway_kind_is_configured_trained_and_exported(tiny_whisper_dir, sentences_corpus, tmp_path):
    cfg = load_config(DistillConfig, None, {"student.kind": "toy", "student.toy.gain": 0.25})
    assert cfg.student.options == ToyOptions(gain=0.25)
    assert to_dict(cfg)["student"] == {"name": "", "kind": "toy", "train_frontend": False, "toy": {"gain": 0.25}}
    summary = distill(_cfg(tiny_whisper_dir, sentences_corpus, tmp_path / "run", cfg.student))
    losses = _train_losses(tmp_path / "run")
    assert losses[-1] < losses[0] and summary["student"]["kind"] == "toy"
    student = load_student(tmp_path / "run")
    assert type(student) is ToyStudent
    out = export_student(student, tmp_path / "export")
    assert "toy student" in (out / "README.md").read_text()
    again = AutoModel.from_pretrained(out)  # the kind is registered with transformers too
    wav = 0.1 * torch.randn(1, 16000)
    torch.testing.assert_close(again.eval()(wav)[0][-1], student(wav)[0][-1])


@pytest.mark.parametrize("kind", ["distilhubert", "shared", "pruned"])
def test_one_short_distillation_lowers_the_loss(tiny_whisper_dir, sentences_corpus, tmp_path, kind):
    spec = StudentSpec(kind=kind)
    if kind == "shared":
        spec.shared.depth_sampling = "full"  # a loss comparable from step to step
    summary = distill(_cfg(tiny_whisper_dir, sentences_corpus, tmp_path / kind, spec))
    losses = _train_losses(tmp_path / kind)
    assert losses[-1] < 0.9 * losses[0], losses
    assert summary["student"]["kind"] == kind
    assert summary["loss"] == ("l1_cos" if kind == "distilhubert" else "mse")
    assert load_student(tmp_path / kind).kind == kind
