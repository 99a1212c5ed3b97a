"""Typed configs: defaults <- YAML <- command-line overrides, with type checks."""

from __future__ import annotations

import re

import pytest

from distill.cli import main
from distill.core.config import load_config, to_dict
from distill.training.distillation import DistillConfig


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher: facebook/hubert-base-ls960\ntrain:\n  lr: 0.0005\n  max_steps: 10\n")
    cfg = load_config(DistillConfig, f, ["train.max_steps=20", "student.mimic.target_layers=[4, 12]", "train.lr=3e-4"])
    assert cfg.teacher == "facebook/hubert-base-ls960"
    assert cfg.train.max_steps == 20 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.student.mimic.target_layers == [4, 12]
    assert cfg.train.warmup_steps == DistillConfig().train.warmup_steps  # untouched default
    assert load_config(DistillConfig, None, {"train.seed": 5}).train.seed == 5
    assert to_dict(cfg)["student"]["mimic"]["target_layers"] == [4, 12]


def test_overwrite_is_never_saved_nor_read_from_a_file(tmp_path):
    from distill.core.config import save_config

    cfg = load_config(DistillConfig, None, ["overwrite=true"])
    assert cfg.overwrite is True
    save_config(cfg, tmp_path / "c.yaml")
    assert "overwrite" not in (tmp_path / "c.yaml").read_text()
    (tmp_path / "d.yaml").write_text("overwrite: true\ntrain:\n  max_steps: 3\n")
    loaded = load_config(DistillConfig, tmp_path / "d.yaml")
    assert loaded.overwrite is False and loaded.train.max_steps == 3
    assert load_config(DistillConfig, tmp_path / "d.yaml", ["overwrite=true"]).overwrite is True


def test_yaml_booleans_spell_literal_choices():
    """YAML 1.1 reads ``no`` as false: ``--train.mixed_precision no`` still means the choice "no"."""
    assert load_config(DistillConfig, None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(DistillConfig, None, {"train.mixed_precision": False}).train.mixed_precision == "no"
    with pytest.raises(ValueError, match="must be one of"):
        load_config(DistillConfig, None, ["train.mixed_precision=yes"])


@pytest.mark.parametrize("override,message", [("train.max_steps=ten", "integer"), ("train.nope=1", "unknown"),
                                              ("train.resume=maybe", "true/false")])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(DistillConfig, None, [override])


def test_cli_prints_defaults_and_reports_errors(capsys, tmp_path):
    assert main(["config", "distill"]) == 0
    assert "max_steps: 300" in capsys.readouterr().out
    assert main(["distill", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def test_every_command_has_working_help(capsys):
    from distill.cli import _commands

    commands = _commands()
    for name, (_help, cls, _fn) in commands.items():
        with pytest.raises(SystemExit) as exit_:
            main([*name.split(), "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--config" in out
        flags = set(re.findall(r"(--[\w.]+)", out))
        leaves = _leaf_fields(cls())
        assert len(leaves) >= 3, name
        missing = sorted(f"--{leaf}" for leaf in leaves if f"--{leaf}" not in flags)
        assert not missing, f"{name}: fields without a flag: {missing}"


def _leaf_fields(obj, prefix: str = "") -> list[str]:
    """Every leaf setting of a config object, dotted (``train.max_steps``), found by walking its
    dataclass fields (and a student spec's per-kind sections), independently of the CLI code."""
    import dataclasses

    from students.registry import StudentSpec

    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, StudentSpec):
            out += [f"{prefix}{f.name}.{g.name}" for g in dataclasses.fields(value) if g.name != "sections"]
            for kind, section in value.sections.items():
                out += _leaf_fields(section, f"{prefix}{f.name}.{kind}.")
        elif dataclasses.is_dataclass(value):
            out += _leaf_fields(value, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out
