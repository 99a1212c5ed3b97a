"""Exports load without stackdistill: plain teacher architectures, or remote code for mimic students.

Each check loads the export in a fresh Python process that must not import distill, students
or tasks (asserted through ``sys.modules``) and compares its hidden states with the student's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distill.deploy.export import ExportConfig, export, export_student
from distill.models.teacher import load_teacher
from students.registry import StudentSpec, build_student
from students.shared import SharedOptions

from . import references
from .conftest import save_tiny_model

PRELUDE = """
import sys, json, torch
from safetensors.torch import load_file
ours = lambda: sorted(k for k in sys.modules if k.split('.')[0] in ('distill', 'students', 'tasks'))
"""


def _run_clean(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a process whose cwd and path hold no stackdistill; returns its JSON line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _perturbed(student):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.stack.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return student.eval()


@pytest.fixture(scope="module")
def hubert_teacher(tmp_path_factory):
    return load_teacher(str(save_tiny_model("hubert", tmp_path_factory.mktemp("ht") / "h", num_hidden_layers=4)))


@pytest.mark.parametrize("kind,depth", [("pruned", None), ("distilhubert", None), ("shared", 3)])
def test_ssl_student_exports_as_a_plain_hubert_folder(hubert_teacher, tmp_path, kind, depth):
    spec = StudentSpec(kind=kind)
    if kind == "pruned":
        spec.pruned.ordering = "first"
    student = _perturbed(build_student(spec, hubert_teacher))
    out = export_student(student, tmp_path / "export", depth=depth)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert not any(n.endswith(".py") for n in names)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["HubertModel"]
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(out / "model.safetensors")["masked_spec_embed"],
                               hubert_teacher.hf_model.masked_spec_embed)  # the teacher's, not a fresh one
    if depth:
        student.set_depth(depth)
    wav = 0.1 * torch.randn(1, 12000, generator=torch.Generator().manual_seed(3))
    states, _ = student(wav)
    save_file({"wav": wav, **{f"s{i}": s.contiguous() for i, s in enumerate(states)}}, tmp_path / "ref.safetensors")
    got = _run_clean(f"""
        from transformers import AutoModel, Wav2Vec2FeatureExtractor
        model = AutoModel.from_pretrained({str(out)!r}).eval()
        Wav2Vec2FeatureExtractor.from_pretrained({str(out)!r})  # what stock s3prl's hf_hubert_custom reads
        ref = load_file({str(tmp_path / 'ref.safetensors')!r})
        with torch.no_grad():
            hs = model(ref['wav'], output_hidden_states=True).hidden_states
        n = len([k for k in ref if k.startswith('s')])
        diff = max(float((hs[i] - ref[f's{{i}}']).abs().max()) for i in range(n))
        print(json.dumps({{"cls": type(model).__name__, "layers": len(hs) - 1, "n": n - 1, "diff": diff,
                          "ours": ours()}}))
    """, tmp_path)
    assert got["cls"] == "HubertModel" and got["ours"] == []
    assert got["layers"] == got["n"] == student.num_layers
    assert got["diff"] < 1e-5


def test_whisper_student_exports_as_a_whisper_encoder(tiny_whisper_dir, tmp_path):
    teacher = load_teacher(str(tiny_whisper_dir))
    student = _perturbed(build_student(StudentSpec(kind="shared"), teacher))
    out = export_student(student, tmp_path / "export", depth=2)
    # Whisper's own encoder takes 30 s of log-mel: compare on a 30 s clip
    wav = 0.05 * torch.randn(1, 30 * 16000, generator=torch.Generator().manual_seed(2))
    student.set_depth(2)
    states, _ = student(wav)
    save_file({"wav": wav, **{f"s{i}": s.contiguous() for i, s in enumerate(states)}}, tmp_path / "ref.safetensors")
    got = _run_clean(f"""
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        model = WhisperEncoder.from_pretrained({str(out)!r}).eval()
        fe = WhisperFeatureExtractor.from_pretrained({str(out)!r})
        ref = load_file({str(tmp_path / 'ref.safetensors')!r})
        feats = fe(ref['wav'][0].numpy(), sampling_rate=16000, return_tensors='pt').input_features
        with torch.no_grad():
            hs = model(feats, output_hidden_states=True).hidden_states
        diff = max(float((hs[i] - ref[f's{{i}}']).abs().max()) for i in range(3))
        print(json.dumps({{"layers": len(hs) - 1, "diff": diff, "ours": ours()}}))
    """, tmp_path)
    assert got["ours"] == [] and got["layers"] == 2
    assert got["diff"] < 1e-3  # float32 log-mel of numpy vs torch


def test_mimic_student_loads_with_trust_remote_code_only(tiny_whisper_dir, tmp_path):
    student = _perturbed(build_student(StudentSpec(kind="mimic"), load_teacher(str(tiny_whisper_dir))))
    out = export_student(student, tmp_path / "export")
    assert "trust_remote_code=True" in (out / "README.md").read_text()
    assert "auto_map" in json.loads((out / "config.json").read_text())
    assert "auto_map" not in student.config.to_dict()  # the student itself is unchanged
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(4))
    lengths = torch.tensor([16000, 11000])
    states, _ = student(wav, lengths)
    save_file({"wav": wav, "lengths": lengths, **{f"s{i}": s.contiguous() for i, s in enumerate(states)}},
              tmp_path / "ref.safetensors")
    got = _run_clean(f"""
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        ref = load_file({str(tmp_path / 'ref.safetensors')!r})
        with torch.no_grad():
            hs, fl = model(ref['wav'], ref['lengths'])
        equal = all(torch.equal(hs[i], ref[f's{{i}}']) for i in range(len(hs)))
        print(json.dumps({{"equal": equal, "n": len(hs), "ours": ours()}}))
    """, tmp_path)
    assert got == {"equal": True, "n": len(states), "ours": []}


def test_export_command_takes_a_run_folder_and_a_depth(hubert_teacher, tmp_path):
    student = build_student(StudentSpec(kind="shared", sections={"shared": SharedOptions(groups=2)}), hubert_teacher)
    student.save_pretrained(tmp_path / "run" / "best")
    out = export(ExportConfig(model=str(tmp_path / "run"), out=str(tmp_path / "d3"), depth=3))
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["layerdrop"] == 0.0
    assert json.loads((out / "stackdistill.json").read_text())["depth"] == 3
    exported = load_teacher(str(out))
    shallow = load_teacher(str(tmp_path / "run" / "best"))
    shallow.set_depth(3)
    wav = 0.1 * torch.randn(1, 8000)
    for a, b in zip(exported(wav)[0], shallow(wav)[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="depth must lie"):
        export(ExportConfig(model=str(tmp_path / "run"), out=str(tmp_path / "d9"), depth=9))
    mimic = build_student(StudentSpec(kind="mimic"), hubert_teacher)
    mimic.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="shared students"):
        export(ExportConfig(model=str(tmp_path / "m"), out=str(tmp_path / "x"), depth=1))


@pytest.mark.parametrize("arch,upstream", [("hubert", "hf_hubert_custom"), ("wav2vec2", "hf_wav2vec2_custom")])
def test_stock_s3prl_upstreams_load_the_plain_export(tmp_path, arch, upstream):
    """s3prl's own hf_*_custom upstreams read the folder (no hub): no file of s3prl copied or edited."""
    from s3prl.nn import S3PRLUpstream

    teacher = load_teacher(str(save_tiny_model(arch, tmp_path / "t", num_hidden_layers=4)))
    spec = StudentSpec(kind="pruned")
    spec.pruned.ordering = "last"
    student = _perturbed(build_student(spec, teacher))
    out = export_student(student, tmp_path / "export")
    up = S3PRLUpstream(upstream, path_or_url=str(out)).eval()
    wav = 0.1 * torch.randn(1, 12000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        states, lengths = up(wav, torch.tensor([12000]))
        ours, frames = student(wav)
        # the upstream's own HF model holds the student's weights (s3prl pads the input a little,
        # which moves group-norm statistics, so compare the model on the same input)
        inner = up.upstream.model(wav, output_hidden_states=True).hidden_states
    assert len(states) == len(ours) == student.num_layers + 1
    assert abs(int(lengths[-1][0]) - int(frames[0])) <= 2  # within s3prl's own tolerance of 5 frames
    for a, b in zip(inner, ours):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_stock_s3prl_recipe_evaluates_an_export_without_stackdistill(tmp_path, ks_corpus):
    """The README's recipe: s3prl's own SuperbKS runner with its own hf_hubert_custom upstream on an
    exported student folder; no stackdistill hub entry, adapter or runner involved."""
    from s3prl.problem import SuperbKS

    from tasks.corpora.layouts import resolve_ks_roots
    from tasks.superb.s3prl_compat import apply

    teacher = load_teacher(str(save_tiny_model("hubert", tmp_path / "t", num_hidden_layers=4)))
    spec = StudentSpec(kind="pruned")
    spec.pruned.ordering = "last"
    student = build_student(spec, teacher)
    out = export_student(student, tmp_path / "export")
    apply()  # torchaudio 2.8 / pandas 2 fixes for s3prl itself (docs/dependencies.md)
    train, test = resolve_ks_roots(str(ks_corpus))
    problem = SuperbKS()
    conf = problem.default_config()
    conf.update(target_dir=str(tmp_path / "s3prl"), cache_dir=str(tmp_path / "cache"), remove_all_cache=False)
    conf["prepare_data"] = {"gsc1": str(train), "gsc1_test": str(test)}
    conf["build_upstream"] = {"name": "hf_hubert_custom", "path_or_url": str(out)}
    conf["train"].update(total_steps=4, log_step=2, eval_step=2, save_step=2, auto_resume=False)
    built = []  # the upstream s3prl's own recipe builds (recorded, not replaced)
    problem.build_upstream = lambda cfg: built.append(SuperbKS.build_upstream(problem, cfg)) or built[-1]
    problem.run(**conf, num_workers=0, device="cpu")
    import yaml
    from safetensors.torch import load_file

    assert built, "s3prl built no upstream"
    exported = load_file(str(out / "model.safetensors"))
    inner = {k: v for k, v in built[0].upstream.model.state_dict().items()}
    assert set(exported) <= set(inner) and len(exported) > 10
    for name, tensor in exported.items():  # s3prl's upstream holds exactly the exported weights ...
        torch.testing.assert_close(inner[name].cpu(), tensor, rtol=0, atol=0)
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # ... and computes what the student does, layer by layer
        model = built[0].upstream.model.eval()  # s3prl leaves it in training mode (dropout)
        theirs = model(wav, output_hidden_states=True).hidden_states
        ours, _ = student.eval()(wav)
    assert len(theirs) == len(ours) == student.num_layers + 1
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    result = yaml.safe_load((tmp_path / "s3prl" / "evaluate" / "valid_best" / "test" / "result.yaml").read_text())
    test_rows = (tmp_path / "s3prl" / "test.csv").read_text().splitlines()[1:]
    n = len(list(test.rglob("*.wav")))
    assert len(test_rows) == n  # s3prl scored every file of the test root
    references.count_of(float(result["accuracy"]), n)  # a whole number right out of that n


FIXTURE = Path(__file__).parent / "fixtures" / "export_before_move_mimic"


def _fixture_input() -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(16000) / 16000
    wav = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t), 0.2 * torch.sin(2 * torch.pi * 220 * t)])
    return wav, torch.tensor([16000, 9000])


def test_an_export_made_before_the_move_still_loads(tmp_path):
    """A mimic student exported by the flat ``distill/`` layout (its modelling code bundled then) loads
    today both ways, with transformers alone and as a stackdistill model, and gives the recorded outputs."""
    ref = json.loads((FIXTURE.parent / "export_before_move_mimic_reference.json").read_text())
    clean = _run_clean(f"""
        import math
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(FIXTURE)!r}, trust_remote_code=True).eval()
        t = torch.arange(16000) / 16000
        wav = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t), 0.2 * torch.sin(2 * math.pi * 220 * t)])
        with torch.no_grad():
            states, fl = m(wav, torch.tensor([16000, 9000]))
        print(json.dumps({{"ours": ours(), "frame_lengths": fl.tolist(), "num_states": len(states),
                          "sums": [float(states[-1][i, :n].sum()) for i, n in enumerate(fl.tolist())]}}))
    """, tmp_path)
    assert clean["ours"] == []
    assert clean["frame_lengths"] == ref["frame_lengths"] and clean["num_states"] == ref["num_states"]
    assert clean["sums"] == pytest.approx(ref["last_state_valid_sum"], rel=1e-4)
    model = load_teacher(str(FIXTURE))  # the same folder through stackdistill's own student classes
    wav, lengths = _fixture_input()
    with torch.no_grad():
        states, fl = model(wav, lengths)
    assert fl.tolist() == ref["frame_lengths"]
    assert [float(states[-1][i, :n].abs().sum()) for i, n in enumerate(fl.tolist())] == \
        pytest.approx(ref["last_state_valid_abs_sum"], rel=1e-4)
