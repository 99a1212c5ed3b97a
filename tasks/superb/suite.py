"""The SUPERB suite: every model on every task, one SUPERB-style table.

``stackdistill evaluate --suite ks,sid,ic,pr,asr --models TEACHER,A,B`` runs the grid (the first
model is the reference for retention), one s3prl run a cell, and writes ``suite.json``,
``suite.md``, ``suite.png`` (retention per task) and ``suite_<task>.png`` (each task's metric against
size, 95 % intervals, the frontier of non-dominated models): a row a model, a column a task, with params, MACs per second of
audio, each figure's test-set size and 95 % interval, and each model's retention of the
reference per task (accuracy ratio; error-rate ratio reference / model). A finished cell (its
``metrics.json`` written with the same settings) is never recomputed, so a killed suite resumes.
Each cell is measured at the model's own best downstream lr over ``--lr_grid`` (chosen by
validation) and repeated over ``--seeds`` (:mod:`tasks.superb.selection`); the table shows the
chosen lr per cell and the spread over seeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from distill.core.fsutil import write_json_atomic, write_text_atomic
from distill.core.pareto import non_dominated
from distill.core.plots import pareto, save_figure, set_title
from distill.deploy.bench import macs_per_audio_second, model_names
from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.protocol import retention_pct
from tasks.superb.registry import get_task
from tasks.superb.selection import evaluate_task, run_selected

log = logging.getLogger(__name__)


def default_root(task: str) -> str:
    """Where ``stackdistill corpus ks|sid|ic|librispeech`` writes the task's synthetic corpus by default
    (ER has none)."""
    from tasks.corpora.superb_corpora import FluentCommandsConfig, LibriSpeechConfig, VoxCelebConfig
    from tasks.corpora.synthetic import SpeechCommandsConfig

    outs = {"ks": SpeechCommandsConfig().out, "sid": VoxCelebConfig().out, "ic": FluentCommandsConfig().out,
            "pr": LibriSpeechConfig().out, "asr": LibriSpeechConfig().out}
    return outs.get(task, "")


CORPUS_COMMAND = {"ks": "corpus ks", "sid": "corpus sid", "ic": "corpus ic", "pr": "corpus librispeech",
                  "asr": "corpus librispeech"}


@dataclass
class SuiteConfig:
    tasks: list[str] = field(default_factory=lambda: ["ks"], metadata={"help": "SUPERB tasks (columns)"})
    models: list[str] = field(default_factory=list, metadata={"help": "model specs (rows); the first is the reference"})
    names: list[str] = field(default_factory=list, metadata={"help": "row names (default: from the specs)"})
    data: dict = field(default_factory=dict, metadata={"help": "task -> dataset root (default: the synthetic corpora)"})
    steps: dict = field(default_factory=dict, metadata={"help": "task -> downstream steps (default: evaluate.steps)"})
    out: str = "runs/suite"
    evaluate: object = None  # an EvaluateConfig: the settings every cell shares

    @classmethod
    def from_evaluate(cls, cfg) -> "SuiteConfig":
        models = [m for m in cfg.models.split(",") if m] if isinstance(cfg.models, str) else list(cfg.models)
        if not models:
            raise ValueError("--suite needs --models A,B,... (the first is the reference)")
        tasks = [t for t in cfg.suite.split(",") if t]
        if cfg.data and len(tasks) > 1:
            raise ValueError("--data names one root: with several --suite tasks each reads its default root "
                             "(docs/superb.md); run one task per suite, or use the library's "
                             "SuiteConfig(data={task: root})")
        data = {t: cfg.data or default_root(t) for t in tasks}
        return cls(tasks=tasks, models=models, data=data, out=cfg.out, evaluate=cfg)


SUITE_SEEDS = 2  # downstream seeds per cell unless --seeds says otherwise


def suite_lr_grid(base, task) -> list[float]:
    """A cell's lr grid: ``--lr_grid``; else ``--lr`` alone when given; else the task's lr and ten times it
    (the STaRHuBERT / ARMHuBERT recipes raise SID's tenfold; s3prl issue 268)."""
    if base.lr_grid:
        return list(base.lr_grid)
    if base.lr:
        return [base.lr]
    return [task.default_lr, 10 * task.default_lr]


def run_suite(cfg: SuiteConfig) -> dict:
    """Run (or resume) the grid; returns ``suite.json``'s content."""
    from distill.models.teacher import load_teacher


    base = cfg.evaluate if cfg.evaluate is not None else EvaluateConfig()
    tasks = [get_task(t) for t in cfg.tasks]
    roots = {}
    for task in tasks:  # every layout checked before any model is loaded or any cell run
        root = cfg.data.get(task.name) or default_root(task.name)
        try:
            task.resolve(root, base.test_data if task.name == "ks" else "")
        except ValueError as err:
            hint = f" (the synthetic corpus: stackdistill {CORPUS_COMMAND[task.name]})" if task.name in CORPUS_COMMAND \
                else ""
            raise ValueError(f"suite task {task.name}{hint}: {err}") from err
        roots[task.name] = root
    names = model_names(cfg.models, cfg.names)
    out = Path(cfg.out)
    cells: dict[str, dict[str, dict]] = {name: {} for name in names}
    for name, spec in zip(names, cfg.models):
        for task in tasks:
            cell_dir = out / name / task.name
            cell_cfg = replace(base, task=task.name, model=spec, data=roots[task.name], out=str(cell_dir), suite="",
                               models="", steps=int(cfg.steps.get(task.name, base.steps)),
                               test_data=base.test_data if task.name == "ks" else "",
                               lr_grid=suite_lr_grid(base, task), seeds=base.seeds or SUITE_SEEDS)
            cells[name][task.name] = run_selected(cell_cfg)  # a finished run is reused: a killed suite resumes
    costs = {}
    for name, spec in zip(names, cfg.models):

        model = load_teacher(spec)
        costs[name] = {**model.info.to_dict(), "macs_per_audio_second": macs_per_audio_second(model)}
    reference = names[0]
    rows = {}
    for name in names:
        rows[name] = {"spec": cfg.models[names.index(name)], **{k: costs[name][k] for k in (
            "params_frontend", "params_stack", "params_total", "macs_per_audio_second")}, "tasks": {}}
        for task in tasks:
            m = cells[name][task.name]
            rows[name]["tasks"][task.name] = {
                "metric": m["metric"], "value": m["value"], "higher_is_better": m["higher_is_better"],
                "test_n": m["test_n"], "units": m.get("units"), "ci95": m["ci95"], "chance": m.get("chance"),
                "retention_pct": None if name == reference else retention_pct(m, cells[reference][task.name]),
                "steps": m["steps"], "seconds": m["seconds"], "lr": m.get("lr"),
                "lr_selection": m.get("lr_selection"), "seed_runs": m.get("seed_runs")}
    suite = {"reference": reference, "tasks": cfg.tasks, "models": rows,
             "data": roots, "table_md": str(out / "suite.md"), "table_png": str(out / "suite.png"),
             "task_pngs": {t: str(out / f"suite_{t}.png") for t in cfg.tasks},
             "frontier": {t: non_dominated(_task_points(rows, t), rows[reference]["tasks"][t]["higher_is_better"])
                          for t in cfg.tasks}}
    write_json_atomic(out / "suite.json", suite)
    write_text_atomic(out / "suite.md", render_suite(suite))
    plot_suite(suite, out / "suite.png")
    for t in cfg.tasks:
        plot_task(suite, t, out / f"suite_{t}.png")
    return suite


def _task_points(rows: dict, task: str) -> dict[str, tuple[float, float]]:
    """``{model: (params in millions, metric in %)}`` for one task."""
    return {n: (row["params_total"] / 1e6, 100 * row["tasks"][task]["value"]) for n, row in rows.items()}


def plot_task(suite: dict, task: str, path: Path):
    """One task's metric against size: each model's 95 % interval, the frontier of non-dominated models."""
    rows = suite["models"]
    first = rows[suite["reference"]]["tasks"][task]
    better = "higher" if first["higher_is_better"] else "lower"
    return pareto(_task_points(rows, task), path, "parameters, total (millions)",
                  f"{task.upper()} {first['metric'].upper()} (%, {better} is better), 95 % interval",
                  f"SUPERB {task.upper()} against size (reference {suite['reference']})", reference=suite["reference"],
                  intervals={n: tuple(100 * v for v in row["tasks"][task]["ci95"]) if row["tasks"][task].get("ci95")
                             else None for n, row in rows.items()},
                  higher_is_better=first["higher_is_better"])


def _fmt(cell: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    interval = f" [{pct(cell['ci95'][0])}, {pct(cell['ci95'][1])}]" if cell.get("ci95") else ""
    n = f"n = {cell['test_n']}" + (f", {cell['units']} tokens" if cell.get("units") else "")
    chance = f"; chance {pct(cell['chance'])} %" if cell.get("chance") is not None else ""
    seeds = cell.get("seed_runs")
    spread = f" ± {pct(seeds['sd'])} sd over {len(seeds['values'])} seeds" if seeds and len(seeds["values"]) > 1 else ""
    lr = f"; lr {cell['lr']:g}" if cell.get("lr") else ""
    chosen = " (best of " + ", ".join(cell["lr_selection"]["valid"]) + " by validation)" \
        if cell.get("lr_selection") else ""
    return f"{pct(cell['value'])} %{spread}{interval}, {n}{chance}{lr}{chosen}"


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def render_suite(suite: dict) -> str:
    """Markdown: a row a model, a column a task (metric in %, interval, size), then retention."""
    tasks = suite["tasks"]
    first = next(iter(suite["models"].values()))["tasks"]
    heads = [f"{t.upper()} {first[t]['metric'].upper()} ({'higher' if first[t]['higher_is_better'] else 'lower'} "
             "is better)" for t in tasks]
    lines = ["| model | params | MACs / s of audio (1 s clip) | " + " | ".join(heads) + " |",
             "|---|---:|---:|" + "---|" * len(tasks)]
    for name, row in suite["models"].items():
        cells = " | ".join(_fmt(row["tasks"][t]) for t in tasks)
        lines.append(f"| {name} | {row['params_total'] / 1e6:.2f} M | {_si(row['macs_per_audio_second'])} | {cells} |")
    if suite.get("frontier"):
        lines += ["", "Non-dominated per task (no other model is smaller and better), smallest first: " + "; ".join(
            f"{t.upper()}: " + ", ".join(suite["frontier"][t]) for t in tasks) + "."]
    lines += ["", f"Retention of {suite['reference']} (accuracy ratio; error-rate ratio reference / model):", "",
              "| model | " + " | ".join(t.upper() for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for name, row in suite["models"].items():
        if name == suite["reference"]:
            continue
        vals = [row["tasks"][t]["retention_pct"] for t in tasks]
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.1f} %" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def plot_suite(suite: dict, path: Path):
    """Grouped bars: each model's retention of the reference per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = suite["tasks"]
    others = [n for n in suite["models"] if n != suite["reference"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks), 3.2))
    width = 0.8 / max(1, len(others))
    for i, name in enumerate(others):
        vals = [suite["models"][name]["tasks"][t]["retention_pct"] for t in tasks]
        xs = [k + i * width for k, v in zip(range(len(tasks)), vals) if v is not None]  # undefined: no bar
        ax.bar(xs, [min(v, 200) for v in vals if v is not None], width, label=name)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xticks([k + width * (len(others) - 1) / 2 for k in range(len(tasks))], [t.upper() for t in tasks])
    ax.set_ylabel(f"% of {suite['reference']} (capped at 200)")
    set_title(ax, f"SUPERB: retention of {suite['reference']} per task", 10)
    if others:
        ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def evaluate(cfg: EvaluateConfig) -> dict:
    """``stackdistill evaluate``: ``--task`` one task on one model; ``--suite`` the grid of tasks x models."""
    if cfg.suite:
        return run_suite(SuiteConfig.from_evaluate(cfg))
    return evaluate_task(cfg)
