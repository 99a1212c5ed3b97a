"""Export a student as a folder others load without stackdistill.

* Students made of the teacher's own layers (pruned, DistilHuBERT-style backbone, shared at a
  chosen depth) become a plain folder of the teacher's Hugging Face architecture
  (``HubertModel``, ``Wav2Vec2Model``, ``WavLMModel``, ``Data2VecAudioModel``, or a
  ``WhisperEncoder``), with ``preprocessor_config.json``; transformers alone loads it, and so do
  stock s3prl's ``hf_hubert_custom`` / ``hf_wav2vec2_custom`` upstreams.
* Other students (mimic) are saved with their modelling code in the folder and an ``auto_map``,
  so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` loads them without
  ``import students``. A kind whose code lives outside ``students/`` is saved as a stackdistill
  folder (loading it needs that code imported).

Every export carries a model card (``README.md``) written from the student's own description.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.core.fsutil import atomic_dir, claim_run_folder, write_text_atomic
from distill.core.protocol import require_finite

log = logging.getLogger(__name__)

OUR_PACKAGES = ("distill", "students")


@dataclass
class ExportConfig:
    model: str = field(default="", metadata={
        "help": "hf: a distillation run folder (its best/ student) or a student folder; onnx: any model spec"})
    out: str = field(default="", metadata={"help": "destination folder"})
    format: Literal["hf", "onnx"] = field(default="hf", metadata={
        "help": "hf (Hugging Face folder; students) or onnx (model.onnx + check.json; any model)"})
    depth: int = field(default=0, metadata={"help": "shared students: depth to export (0: the student's own)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing folder at out (else refused)"})


def student_folder(path: str | Path) -> Path:
    """The student folder of a run (``best/``, else ``last/``) or the folder itself."""
    path = Path(path)
    for candidate in (path, path / "best", path / "last"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"{path}: no student found (expected config.json here or in best/ or last/)")


def load_student(path: str | Path):
    """A stackdistill student from a run or student folder, frozen, named by its folder."""
    from transformers import AutoModel

    import students  # noqa: F401  (registers the student kinds)

    folder = student_folder(path)
    config = json.loads((folder / "config.json").read_text())
    if not str(config.get("model_type", "")).startswith("stackdistill"):
        raise ValueError(f"{folder}: not a stackdistill student (model_type {config.get('model_type')!r})")
    model = AutoModel.from_pretrained(folder)
    model.name = str(folder)
    return model.as_teacher()


# -- model card ---------------------------------------------------------------------------------

def model_card(student, how_to_load: str, extra: dict | None = None) -> str:
    """Markdown card: what the student is (from the student itself), its size, how to load it."""
    c, info = student.config, student.info
    rows = {"teacher": f"`{c.teacher_name}` ({c.teacher_num_layers} layers)", **student.card_rows(),
            "parameters": f"frontend {info.params_frontend:,}, stack {info.params_stack:,}, total {info.params_total:,}",
            "frame hop": f"{info.hop} samples at 16 kHz", **(extra or {})}
    lines = [f"# {student.kind} student of {c.teacher_name}", "", f"Made with stackdistill: {student.describe()}.", "",
             "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines + ["", "## How to load", "", "transformers:", "", "```python", how_to_load.strip(), "```",
                               "", OTHER_LOADERS, EVALUATION_MARK, "", "Not evaluated yet: "
                               "`stackdistill evaluate --task ks --model PATH --data <Speech Commands root>`.", ""])


OTHER_LOADERS = """s3prl (any downstream recipe; in the running process):

```python
from tasks.superb.s3prl_upstream import register   # stackdistill's in-process hub entry
from s3prl.nn import S3PRLUpstream
upstream = S3PRLUpstream(register(), path_or_url=PATH)
```

onnxruntime: `stackdistill export --format onnx --model PATH --out PATH-onnx` writes `model.onnx`,
checked against PyTorch on real speech (its own card says how to call it).
"""
EVALUATION_MARK = "## Evaluation"


def write_card_evaluation(folder: str | Path, rows: dict[str, str], note: str = "") -> None:
    """Replace the card's evaluation section with ``rows`` (figure -> value and the command)."""
    card = Path(folder) / "README.md"
    text = card.read_text() if card.is_file() else ""
    head = text.split(EVALUATION_MARK)[0].rstrip()
    body = ["| result | value | produced by |", "|---|---|---|"] + [
        f"| {k} | {v[0]} | `{v[1]}` |" if isinstance(v, tuple) else f"| {k} | {v} | |" for k, v in rows.items()]
    write_text_atomic(card, "\n".join([head, "", EVALUATION_MARK, "", *([note, ""] if note else []), *body, ""]))


# -- modelling code bundled into the folder -------------------------------------------------------

def _imports_of(source: str) -> list[tuple[str, int]]:
    """``(module, level)`` of every ``from X import`` in ``source`` (any nesting)."""
    return [(node.module or "", node.level) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom)]


def _resolve(module: str, level: int, package: str) -> str:
    if level == 0:
        return module
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def code_bundle(cls) -> dict[str, str] | None:
    """``{file name: source}`` of ``cls``'s module and every stackdistill module it imports.

    Imports between them are rewritten to the bundle's flat relative names
    (``students.blocks`` -> ``.stackdistill_blocks``, ``distill.core.protocol`` ->
    ``.stackdistill_distill_core``). ``None`` when the class lives outside ``students/`` (a
    user's own kind) or a module imports ours in a form the rewrite does not handle
    (``import distill.x``, ``from . import x``).
    """
    root = cls.__module__
    if root.split(".")[0] != "students":
        return None
    todo, sources = [root], {}
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        module = importlib.import_module(name)
        sources[name] = inspect.getsource(module)
        package = name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(sources[name])):
            plain = isinstance(node, ast.Import) and any(a.name.split(".")[0] in OUR_PACKAGES for a in node.names)
            if plain or (isinstance(node, ast.ImportFrom) and node.level and not node.module):
                log.warning("%s: an import form the code bundle cannot rewrite (line %d)", name, node.lineno)
                return None
        for mod, level in _imports_of(sources[name]):
            full = _resolve(mod, level, package)
            if full.split(".")[0] in OUR_PACKAGES:
                todo.append(full)

    def flat(name: str) -> str:
        return "stackdistill_" + name.split(".")[-1] if name.startswith("students.") else \
            "stackdistill_" + name.replace(".", "_")

    bundle = {}
    for name, src in sources.items():
        package = name.rsplit(".", 1)[0]
        tree_lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom):
                full = _resolve(node.module or "", node.level, package)
                if full.split(".")[0] in OUR_PACKAGES:
                    line = tree_lines[node.lineno - 1]
                    head = line[: node.col_offset]
                    rest = line[node.col_offset:]
                    after = rest.split(" import ", 1)[1]
                    tree_lines[node.lineno - 1] = f"{head}from .{flat(full)} import {after}"
        bundle[flat(name) + ".py"] = "\n".join(tree_lines) + "\n"
    # transformers copies into its module cache only the modules the main file imports itself: a
    # module imported further down (or inside a function) would be missing when first called
    main = flat(root) + ".py"
    others = sorted(f[:-3] for f in bundle if f != main)
    bundle[main] += "\n# every bundled module, so that transformers copies each beside this one\n" + "".join(
        f"from .{m} import __name__ as _bundled_{i}  # noqa: E402,F401\n" for i, m in enumerate(others))
    return bundle


def _usage_plain(arch: str) -> str:
    if arch == "whisper":
        return ("from transformers.models.whisper.modeling_whisper import WhisperEncoder\n"
                "model = WhisperEncoder.from_pretrained(PATH)  # log-mel input, as WhisperFeatureExtractor makes it\n"
                "hidden_states = model(input_features, output_hidden_states=True).hidden_states")
    return ("from transformers import AutoModel\nmodel = AutoModel.from_pretrained(PATH)  # a plain "
            f"{arch} model\nhidden_states = model(wav, output_hidden_states=True).hidden_states  # wav: (batch, samples)"
            "\n# s3prl: S3PRLUpstream('hf_hubert_custom', path_or_url=PATH) (or hf_wav2vec2_custom)")


def export_student(student, out: str | Path, depth: int | None = None, extra: dict | None = None) -> Path:
    """Write ``student`` to ``out`` (see the module docstring); ``depth`` for shared students."""
    from students.hf_layers import HFLayerStudent

    out = Path(out)
    require_finite(student, f"exporting {student.name} to {out}")
    if isinstance(student, HFLayerStudent) and student.exports_plain():
        card_extra = dict(extra or {})
        if depth:
            card_extra["exported depth"] = str(depth)
        card = model_card(student, _usage_plain(student.config.frontend_arch), card_extra)
        return student.save_standard(out, depth or None, card=card)
    if depth:
        raise ValueError(f"--depth applies to shared students; {student.name} is a {student.kind} student")
    bundle = code_bundle(type(student))
    with atomic_dir(out) as tmp:
        if bundle is None:
            log.warning("%s: student kind %r lives outside students/, so its code is not bundled; loading the "
                        "export needs that code imported", student.name, student.kind)
            student.save_pretrained(tmp, safe_serialization=True)
            how = "import <the module defining this student kind>\nfrom transformers import AutoModel\n" \
                  "model = AutoModel.from_pretrained(PATH)"
        else:
            main = "stackdistill_" + type(student).__module__.split(".")[-1]
            before = getattr(student.config, "auto_map", None)
            student.config.auto_map = {"AutoConfig": f"{main}.{type(student.config).__name__}",
                                       "AutoModel": f"{main}.{type(student).__name__}"}
            try:
                student.save_pretrained(tmp, safe_serialization=True)
            finally:
                if before is None:
                    del student.config.auto_map
                else:
                    student.config.auto_map = before
            for name, text in bundle.items():
                (tmp / name).write_text(text)
            how = "from transformers import AutoModel\nmodel = AutoModel.from_pretrained(PATH, trust_remote_code=True)"
        how += "\nhidden_states, frame_lengths = model(wav, lengths)  # wav: (batch, samples) at 16 kHz"
        (tmp / "README.md").write_text(model_card(student, how, extra))
    return out


def export(cfg: ExportConfig) -> Path:
    if not cfg.model or not cfg.out:
        raise ValueError("export needs model=<run or student folder> and out=<folder>")
    if cfg.format not in ("hf", "onnx"):
        raise ValueError(f"unknown export format {cfg.format!r}; available: hf, onnx")
    if cfg.format == "onnx":
        claim_run_folder(cfg.out, overwrite=cfg.overwrite)
        return export_onnx_folder(cfg.model, cfg.out)
    if cfg.depth < 0:
        raise ValueError(f"depth must be positive (or 0: the student's own), got {cfg.depth}")
    claim_run_folder(cfg.out, overwrite=cfg.overwrite)
    return export_student(load_student(cfg.model), cfg.out, cfg.depth or None)


ONNX_TOLERANCE = 1e-3  # largest absolute difference of any hidden state accepted (float32: ~1e-6 seen)


def export_onnx_folder(spec: str, out: str | Path) -> Path:
    """``out/model.onnx`` of any model, checked with onnxruntime on real audio (``check.json``),
    with a model card; returns the folder."""
    from distill.core.fsutil import write_json_atomic
    from distill.data.audio import real_speech_batch
    from distill.deploy.onnx_export import check_onnx, export_onnx
    from distill.models.teacher import load_teacher

    model = load_teacher(spec)
    require_finite(model, f"exporting {spec} to {out}")
    with atomic_dir(Path(out)) as tmp:
        path = export_onnx(model, tmp / "model.onnx")
        wav, lengths, audio = real_speech_batch(fallback=True)
        check = check_onnx(model, path, wav, lengths)
        write_json_atomic(tmp / "check.json", {"model": spec, "audio": audio, "tolerance": ONNX_TOLERANCE, **check})
        if not check["max_abs_diff"] <= ONNX_TOLERANCE:
            raise ValueError(f"ONNX export of {spec} differs from PyTorch by {check['max_abs_diff']:.2e} "
                             f"(> {ONNX_TOLERANCE:g}) on {audio}: not written")
        info = model.info
        (tmp / "README.md").write_text(onnx_card(spec, info, check))
    log.info("ONNX export of %s: max abs difference %.2e against PyTorch; CPU s per audio s: torch %.4f, onnx %.4f",
             spec, check["max_abs_diff"], check["torch_seconds_per_audio_second"], check["onnx_seconds_per_audio_second"])
    return Path(out)


def onnx_card(spec: str, info, check: dict) -> str:
    return "\n".join([
        f"# {info.name}: ONNX export", "", f"Exported by `stackdistill export --format onnx --model {spec}`.", "",
        "| | |", "|---|---|",
        f"| architecture | {info.arch}, {info.num_layers} layers, width {info.dim} |",
        f"| parameters | frontend {info.params_frontend:,}, stack {info.params_stack:,} |",
        f"| frame hop | {info.hop} samples at 16 kHz |",
        f"| check on real speech | max abs difference {check['max_abs_diff']:.2e} against PyTorch, batch "
        f"{check['batch']} padded (lengths {check['lengths']}) |",
        f"| input | float32 wav at 16 kHz; Whisper models: at most 30 s a clip |",
        f"| wall s per audio s ({check['threads']} threads) | PyTorch {check['torch_seconds_per_audio_second']:.4f}, onnxruntime "
        f"{check['onnx_seconds_per_audio_second']:.4f} |", "",
        "```python", "import numpy as np, onnxruntime as ort",
        "sess = ort.InferenceSession(PATH + '/model.onnx')",
        "# wav: float32 (batch, samples) at 16 kHz, zero-padded; lengths: int64 (batch,)",
        "hidden_states, frame_lengths = sess.run(None, {'wav': wav, 'lengths': lengths})",
        "# hidden_states: (layers + 1, batch, frames, dim), zero past each utterance's frame_lengths", "```", ""])
