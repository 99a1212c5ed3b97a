"""Export a student as a Hugging Face folder others can load.

``config.json`` + ``model.safetensors`` + ``README.md`` (a short model card). Load it with::

    import students                      # registers the stackdistill model types
    from transformers import AutoModel
    model = AutoModel.from_pretrained(folder)
    hidden_states, frame_lengths = model(wav, lengths)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import atomic_dir


@dataclass
class ExportConfig:
    model: str = field(default="", metadata={"help": "run folder (its best/ student) or a student folder"})
    out: str = field(default="", metadata={"help": "destination folder"})
    format: str = field(default="hf", metadata={"help": "hf (Hugging Face folder)"})


def _student_folder(path: Path) -> Path:
    for candidate in (path, path / "best", path / "last"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"{path}: no student found (expected config.json here or in best/ or last/)")


def model_card(student, extra: dict | None = None) -> str:
    c, info = student.config, student.info
    lines = [
        f"# {c.model_type} student of {c.teacher_name}",
        "",
        "Made with stackdistill: the teacher's frontend, then one mimicking layer per target teacher",
        "layer in place of its transformer stack (Dorszewski et al., arXiv 2409.16302).",
        "",
        "| | |", "|---|---|",
        f"| teacher | `{c.teacher_name}` ({c.teacher_num_layers} layers) |",
        f"| target layers | {c.target_layers} |",
        f"| mimicking layer | {getattr(c, 'block_type', '?')}, width {getattr(c, 'mimic_dim', '?')} |",
        f"| parameters | frontend {info.params_frontend:,}, stack {info.params_stack:,}, total {info.params_total:,} |",
        f"| frame hop | {info.hop} samples at 16 kHz |",
    ]
    for k, v in (extra or {}).items():
        lines.append(f"| {k} | {v} |")
    lines += ["", "```python", "import students  # registers the model type with transformers",
              "from transformers import AutoModel", "model = AutoModel.from_pretrained(PATH)",
              "hidden_states, frame_lengths = model(wav, lengths)  # wav: (batch, samples) at 16 kHz", "```", ""]
    return "\n".join(lines)


def export_hf(student, out: str | Path, extra: dict | None = None) -> Path:
    """Write ``student`` to ``out`` atomically as config + safetensors + model card."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(model_card(student, extra))
    return out


def export(cfg: ExportConfig) -> Path:
    from transformers import AutoModel

    import students  # noqa: F401

    if not cfg.model or not cfg.out:
        raise ValueError("export needs model=<run or student folder> and out=<folder>")
    if cfg.format != "hf":
        raise ValueError(f"unknown export format {cfg.format!r}; available: hf")
    src = _student_folder(Path(cfg.model))
    student = AutoModel.from_pretrained(src)
    return export_hf(student, cfg.out)
