"""The shared-layer student at every depth, measured against the Layer Consistency paper.

One trained shared student (Tian et al., arXiv 2105.00812) is exported at each depth d as a
plain model of the teacher's architecture and measured there: SUPERB KS through s3prl, the
quick probe and CPU time, all in one run; plus the paper's three claims on the same run:
parameter ratio of the shared stack to the teacher's (paper: 7.8x fewer), training step time at
a sampled depth against a non-shared student of the same depth (paper: 41.9 % faster), and
inference time at half depth (paper: 37.7 % faster) with the accuracy kept there. Output
folder: ``depth_<d>/model`` (each export), ``depth_<d>/ks``, ``layer_consistency.json``,
``depth_curve.png``.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from distill.core.fsutil import write_json_atomic
from distill.core.names import model_title
from distill.core.plots import depth_curve
from distill.core.protocol import SAMPLE_RATE
from distill.data.corpus import analysis_batches
from distill.deploy.bench import seconds_per_audio_second, train_step_seconds
from distill.deploy.export import export_student
from distill.models.teacher import load_teacher
from tasks.probe import ProbeConfig, run_probe
from tasks.superb.suite import evaluate

PAPER = {"param_ratio": 7.8, "train_faster_pct": 41.9, "inference_faster_pct": 37.7}


@dataclass
class LayerConsistencyConfig:
    enabled: bool = field(default=True, metadata={"help": "measure shared students at every depth"})
    ks_every_depth: bool = field(default=True, metadata={"help": "s3prl KS at every depth (else the full depth only)"})
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "probe at every depth (data: KS train)"})
    timing_steps: int = field(default=6, metadata={"help": "timed training steps per student"})
    timing_crop_seconds: float = field(default=4.0, metadata={"help": "training crops in the step timing"})
    timing_batch_seconds: float = field(default=20.0, metadata={"help": "audio per timed training batch"})


def _trainable_copy(student):
    twin = copy.deepcopy(student)
    twin.stack.requires_grad_(True)
    return twin


def measure_layer_consistency(student, teacher, out: Path, cfg: LayerConsistencyConfig, ks_cfg, ks_train: str,
                              distill_data: list[str], timing_batch: dict, bench, full_depth_ks: dict,
                              teacher_ks: dict) -> dict:
    """Depth curve and the paper's claims for a trained shared ``student``; writes ``out``."""
    from students.base import BuildContext
    from students.shared import SharedOptions, SharedStudent

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    full = student.max_depth
    depths = list(range(1, full + 1))
    models, ks, probe = {}, {}, {}
    for d in depths:
        folder = out / f"depth_{d}"
        export_student(student, folder / "model", depth=d)
        models[d] = load_teacher(str(folder / "model"))
        if d == full:
            ks[d] = full_depth_ks
        elif cfg.ks_every_depth:
            ks[d] = evaluate(replace(ks_cfg, model=str(folder / "model"), out=str(folder / "ks")))
        weights = hashlib.sha1((folder / "model" / "model.safetensors").read_bytes()).hexdigest()[:16]
        probe[d] = run_probe(models[d], replace(cfg.probe, data=ks_train, cache_dir=str(out / "probe_cache")),
                             cache_key=f"{student.name}@depth{d}:{weights}")  # new weights, new features

    threads = torch.get_num_threads()
    torch.set_num_threads(bench.threads)
    speed = seconds_per_audio_second({"teacher": teacher, **{f"depth {d}": models[d] for d in depths}},
                                     timing_batch["wav"], timing_batch["lengths"], rounds=bench.rounds)
    # training step: shared at a sampled depth against a non-shared student of the same depth
    loader, _ = analysis_batches(distill_data, cfg.timing_crop_seconds, cfg.timing_batch_seconds, 0, 0)
    batches = []
    for b in loader:
        if b["wav"] is not None:
            batches.append(b)
        if len(batches) >= 3:
            break
    # a non-shared student of the same depth (one layer per application), trained as a standard model
    # (always full depth: the paper's baseline) and with the same sampled depths (isolates sharing)
    def unshared(sampling: str):
        twin = SharedStudent.from_teacher(teacher, SharedOptions(groups=full, depth=full, depth_sampling=sampling),
                                          BuildContext(seed=student.config.seed))
        twin.freeze_frontend(True)
        return twin

    shared_step = train_step_seconds(_trainable_copy(student), teacher, batches, cfg.timing_steps)
    unshared_full = train_step_seconds(unshared("full"), teacher, batches, cfg.timing_steps)
    unshared_sampled = train_step_seconds(unshared(student.config.depth_sampling), teacher, batches, cfg.timing_steps)
    torch.set_num_threads(threads)

    half = max(1, full // 2)
    t_stack = teacher.info.params_stack
    s_stack = student.info.params_stack
    acc = {d: ks[d]["value"] for d in ks}
    curve = [{"depth": d, "params_stack_plain_export": models[d].info.params_stack,
              "ks_test_accuracy": acc.get(d), "probe_accuracy": probe[d]["accuracy"],
              "cpu_seconds_per_audio_second": speed[f"depth {d}"],
              "ks_retention_pct": None if d not in acc else 100 * acc[d] / max(teacher_ks["value"], 1e-12)}
             for d in depths]
    result = {
        "student": student.name, "groups": student.config.num_unique_layers, "max_depth": full,
        "curve": curve,
        "teacher": {"ks_test_accuracy": teacher_ks["value"],
                    "cpu_seconds_per_audio_second": speed["teacher"], "params_stack": t_stack},
        "claims": {
            "param_ratio": {"teacher_stack": t_stack, "shared_stack": s_stack, "ratio": t_stack / s_stack,
                            "paper": PAPER["param_ratio"]},
            "train_step": {"shared_sampled_seconds": shared_step, "unshared_full_depth_seconds": unshared_full,
                           "unshared_sampled_depth_seconds": unshared_sampled,
                           "faster_pct": 100 * (1 - shared_step / unshared_full),
                           "faster_than_unshared_sampled_pct": 100 * (1 - shared_step / unshared_sampled),
                           "paper_pct": PAPER["train_faster_pct"],
                           "batches": len(batches), "batch_audio_seconds": [float(b["lengths"].sum()) / SAMPLE_RATE
                                                                           for b in batches]},
            "half_depth": {"depth": half, "full_depth": full,
                           "inference_faster_pct": 100 * (1 - speed[f"depth {half}"] / speed[f"depth {full}"]),
                           "paper_pct": PAPER["inference_faster_pct"],
                           "ks_kept_pct": None if half not in acc else 100 * acc[half] / max(acc[full], 1e-12),
                           "probe_kept_pct": 100 * probe[half]["accuracy"] / max(probe[full]["accuracy"], 1e-12)},
        },
        "png": str(out / "depth_curve.png"),
    }
    series = {"probe accuracy": [probe[d]["accuracy"] for d in depths]}
    if len(acc) == len(depths):
        series["KS test accuracy (s3prl)"] = [acc[d] for d in depths]
    depth_curve(depths, series, [speed[f"depth {d}"] for d in depths], out / "depth_curve.png",
                f"{model_title(student)}: one shared model at every depth")
    result["seconds"] = time.time() - t0
    write_json_atomic(out / "layer_consistency.json", result)
    return result
