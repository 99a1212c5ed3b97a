"""Low-rank factorisation without retraining: KS accuracy and CPU time against the parameters kept.

For each parameter fraction, the teacher's linear maps are factorised from the principal
components of their inputs on calibration audio (:class:`students.lowrank.LowRankStudent`,
no training step), then scored like the pruning curves: the linear probe on KS train
(:func:`tasks.probe.run_probe`) and SUPERB KS through s3prl (one downstream run at the
teacher's chosen learning rate), and timed on CPU. Layer pruning's probe curve is drawn on the
same axis (its fraction: the teacher without ``n`` layers), so the two ways of shrinking the
stack without retraining read side by side.

Output (``out``)::

    curve.json      per fraction: parameters, ranks threshold, probe and KS accuracy, CPU time
    curve.png       accuracy against the fraction of parameters kept (low-rank and layer pruning)
    time.png        CPU seconds per audio second against the fraction kept
    models/<f>/     each factorised model (a stackdistill folder)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from distill.core.fsutil import write_json_atomic
from distill.core.names import model_title
from distill.core.plots import curves
from distill.deploy.bench import seconds_per_audio_second
from students.base import BuildContext
from students.lowrank import LowRankOptions, LowRankStudent
from tasks.probe import ProbeConfig, run_probe
from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.suite import evaluate

log = logging.getLogger(__name__)


@dataclass
class LowRankCurveConfig:
    enabled: bool = field(default=True, metadata={"help": "the low-rank curve without retraining"})
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.6, 0.45, 0.33], metadata={
        "help": "parameter fractions of the teacher to factorise to"})
    calibration_utterances: int = field(default=64, metadata={"help": "calibration utterances (distillation audio)"})
    ks: bool = field(default=True, metadata={"help": "also score each point by SUPERB KS through s3prl"})


def run_lowrank_curve(cfg: LowRankCurveConfig, teacher, calibration: list[str], probe: ProbeConfig,
                      ks: EvaluateConfig, batch: dict, out: Path, teacher_scores: dict,
                      layer_curve: dict | None = None, rounds: int = 5) -> dict:
    """The curve; ``teacher_scores``: ``{"probe", "ks", "cpu"}`` of the teacher (the reference points).

    ``ks``: the s3prl settings (data set; a single downstream run is made per point at ``ks.lr``).
    ``layer_curve``: ``{ordering: [probe metric per layers removed]}`` of the pruning curves.
    """
    out.mkdir(parents=True, exist_ok=True)
    total = teacher.info.params_total
    points = []
    options = LowRankOptions(calibration_utterances=cfg.calibration_utterances)
    dense, stats = LowRankStudent.calibrated(teacher, options, BuildContext(calibration, 0))  # once for every point
    for fraction in cfg.fractions:
        tag = f"{fraction:.2f}"
        model = LowRankStudent.factorised(dense, stats, fraction, options.variance)
        model.name = f"lowrank-{tag}"
        folder = out / "models" / tag
        model.save_pretrained(folder, safe_serialization=True)
        model.as_teacher()
        point = {"target": fraction, "params_total": model.info.params_total,
                 "fraction": model.info.params_total / total, "threshold": model.config.threshold,
                 "maps_factorised": len(model.config.ranks),
                 "probe_accuracy": run_probe(model, probe, cache_key=model.name)["accuracy"]}
        if cfg.ks:
            m = evaluate(replace(ks, model=str(folder), out=str(out / "ks" / tag), overwrite=True))
            point.update(ks_test_accuracy=m["value"], ks_ci95=m["ci95"], ks_test_n=m["test_n"])
        point["cpu_seconds_per_audio_second"] = seconds_per_audio_second(
            {"m": model}, batch["wav"], batch["lengths"], rounds=rounds)["m"]
        log.info("low-rank %.2f: %.1f %% of the parameters, probe %.3f", fraction, 100 * point["fraction"],
                 point["probe_accuracy"])
        points.append(point)

    xs = [1.0] + [p["fraction"] for p in points]
    series = {"low-rank, probe": (xs, [teacher_scores["probe"]] + [p["probe_accuracy"] for p in points])}
    if cfg.ks:
        series["low-rank, SUPERB KS (s3prl)"] = (xs, [teacher_scores["ks"]] + [p["ks_test_accuracy"] for p in points])
    layer_fractions = None
    if layer_curve:
        per_layer = teacher.info.params_stack / teacher.num_layers
        layer_fractions = [(total - n * per_layer) / total for n in range(len(next(iter(layer_curve.values()))))]
        for ordering, values in layer_curve.items():
            series[f"layers removed ({ordering}), probe"] = (layer_fractions, values)
    curves(series, out / "curve.png", "fraction of the teacher's parameters kept (no retraining)", "KS accuracy",
           f"low-rank factorisation vs layer pruning: {model_title(teacher)}", integer_x=False)
    curves({"low-rank": (xs, [teacher_scores["cpu"]] + [p["cpu_seconds_per_audio_second"] for p in points])},
           out / "time.png", "fraction of the teacher's parameters kept", "CPU seconds per audio second",
           f"low-rank factorisation: {model_title(teacher)}", integer_x=False)
    result = {"teacher_name": teacher.name, "teacher_params_total": total, "teacher": teacher_scores, "points": points,
              "layer_pruning": None if layer_curve is None else {"fractions": layer_fractions, "probe": layer_curve},
              "calibration": calibration, "curve_png": str(out / "curve.png"), "time_png": str(out / "time.png")}
    write_json_atomic(out / "curve.json", result)
    return result
