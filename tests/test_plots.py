"""Pictures a reader can trust: each figure is checked by its size and by what was drawn (title,
points, error bars, the frontier), against values computed here, and every text inside the frame."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from PIL import Image

from distill.core import plots
from distill.core.names import model_title, readable_name
from distill.core.pareto import non_dominated


def _brute_frontier(points: dict, higher: bool) -> set[str]:
    """Independent reference: a model is on the frontier unless some other is no larger and no worse,
    and strictly better in one."""
    sign = 1 if higher else -1
    out = set()
    for n, (s, v) in points.items():
        beaten = any(s2 <= s and sign * v2 >= sign * v and (s2, v2) != (s, v) for m, (s2, v2) in points.items() if m != n)
        if not beaten:
            out.add(n)
    return out


def _renderer(fig):
    """The saved (closed) figure drawn again on an Agg canvas: the same layout, measurable."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _drawn_ticks(axis) -> list:
    lo, hi = sorted(axis.get_view_interval())
    return [label for t in axis.get_major_ticks() if lo - 1e-9 <= t.get_loc() <= hi + 1e-9
            for label in (t.label1, t.label2) if label.get_visible()]


def _texts_outside(fig) -> list[str]:
    renderer = _renderer(fig)
    frame = fig.bbox
    texts = [t for ax in fig.axes for t in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts,
                                             *_drawn_ticks(ax.xaxis), *_drawn_ticks(ax.yaxis)]]
    texts += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    bad = []
    for t in texts:
        if not t.get_visible() or not t.get_text():
            continue
        b = t.get_window_extent(renderer)
        if b.x0 < frame.x0 - 1 or b.x1 > frame.x1 + 1 or b.y0 < frame.y0 - 1 or b.y1 > frame.y1 + 1:
            bad.append(t.get_text())
    return bad


def _png_size(path, fig) -> tuple[int, int]:
    with Image.open(path) as im:
        size = im.size
        pixels = np.asarray(im.convert("L"))
    assert size == (round(fig.get_figwidth() * plots.DPI), round(fig.get_figheight() * plots.DPI))
    assert pixels.std() > 10  # not a blank picture
    return size


@pytest.mark.parametrize("trial", range(50))
def test_non_dominated_matches_a_brute_force_reference(trial):
    rng = random.Random(trial)
    points = {f"m{k}": (rng.choice([1, 2, 3, 4, 5]), rng.choice([50, 60, 70, 80])) for k in range(rng.randint(1, 9))}
    for higher in (True, False):
        front = non_dominated(points, higher)
        assert set(front) == _brute_frontier(points, higher)
        assert [points[n][0] for n in front] == sorted(points[n][0] for n in front)  # smallest first


POINTS = {"teacher": (8.2, 79.8), "lowrank": (2.7, 83.3), "structured": (2.05, 72.7), "mimic-mlp": (1.2, 47.4),
          "distilhubert": (4.66, 63.9), "pruned-comflp": (4.66, 64.1), "mimic-transformer": (2.4, 71.3)}
CIS = {"teacher": (77.3, 82.0), "lowrank": (81.0, 85.4), "structured": (70.0, 75.2), "mimic-mlp": (44.5, 50.3),
       "distilhubert": (61.0, 66.7), "pruned-comflp": (61.2, 66.9), "mimic-transformer": None}


def test_pareto_draws_every_point_its_interval_and_the_frontier(tmp_path):
    path = tmp_path / "pareto.png"
    fig = plots.pareto(POINTS, path, "parameters (M)", "KS accuracy (%)", "KS accuracy against size: students of "
                       "whisper-tiny.en", reference="teacher", vline=8.2 / 3, vline_label="a third of the teacher",
                       intervals=CIS)
    _png_size(path, fig)
    (ax,) = fig.axes
    assert ax.get_title() == "KS accuracy against size: students of whisper-tiny.en"
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(POINTS)  # one label a model
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == sum(ci is not None for ci in CIS.values())  # an error bar per model with an interval
    drawn = set()
    for c in bars:
        (x,), (y,) = c.lines[0].get_data()
        (segments,) = [col.get_segments() for col in c.lines[2]]
        (lo, hi) = sorted(segments[0][:, 1])
        name = next(n for n, p in POINTS.items() if p == pytest.approx((x, y)))
        assert (lo, hi) == pytest.approx(CIS[name])
        drawn.add(name)
    assert drawn == {n for n, ci in CIS.items() if ci is not None}
    # the frontier: a step line through exactly the non-dominated models (reference computed here)
    expected = _brute_frontier(POINTS, True)
    assert expected == {"mimic-mlp", "structured", "lowrank"}
    (step,) = [line for line in ax.get_lines() if line.get_label().startswith("frontier")]
    xs, ys = step.get_data()
    assert {(x, y) for x, y in zip(xs, ys)} == {POINTS[n] for n in expected}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["frontier: 3 non-dominated", "a third of the teacher"]
    assert not _texts_outside(fig)
    renderer = _renderer(fig)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert not [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]


def test_pareto_frontier_for_an_error_rate(tmp_path):
    pts = {"teacher": (8.0, 20.0), "a": (2.0, 25.0), "b": (3.0, 30.0), "c": (1.0, 40.0)}
    fig = plots.pareto(pts, tmp_path / "p.png", "params", "WER (%)", "WER", reference="teacher", higher_is_better=False)
    (step,) = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("frontier")]
    assert set(zip(*step.get_data())) == {pts[n] for n in _brute_frontier(pts, False)} == {pts[n] for n in "ac"} | {
        pts["teacher"]}


LONG = "runs/pipeline-1206b/distill/shared/best (student of /work/teachers/whisper-tiny.en): one shared model at every depth"


def test_long_titles_are_wrapped_and_every_figure_fits_its_frame(tmp_path):
    figs = {
        "depth": plots.depth_curve([1, 2, 3, 4], {"probe accuracy": [0.85, 0.9, 0.93, 0.92]}, [0.003, 0.004, 0.006, 0.008],
                                   tmp_path / "depth.png", LONG),
        "curves": plots.curves({"last": ([0, 1, 2], [0.9, 0.8, 0.5]), "first": ([0, 1, 2], [0.9, 0.6, 0.3])},
                               tmp_path / "curves.png", "layers removed", "accuracy", LONG, hline=0.9),
        "heatmap": plots.heatmap(np.eye(5), tmp_path / "heatmap.png", LONG, blocks=[(0, 2), (3, 4)]),
        "bars": plots.grouped_bars({"mimic": {"real": 0.9, "synthetic": 0.92}}, tmp_path / "bars.png", "cosine", LONG),
    }
    for name, fig in figs.items():
        _png_size(tmp_path / f"{name}.png", fig)
        ax = fig.axes[0]
        assert "\n" in ax.get_title() and ax.get_title().replace("\n", " ") == LONG, name  # wrapped, not cut
        assert not _texts_outside(fig), name
    depth_ax = figs["depth"].axes[0]
    (line,) = depth_ax.get_lines()
    assert list(line.get_data()[0]) == [1, 2, 3, 4]
    assert len(figs["heatmap"].axes[0].patches) == 2  # the two blocks outlined


def test_point_labels_at_the_right_edge_stay_inside(tmp_path):
    pts = {"a-very-long-model-name-at-the-right-edge": (10.0, 50.0), "b": (1.0, 40.0)}
    fig = plots.pareto(pts, tmp_path / "p.png", "params", "acc", "t")
    assert not _texts_outside(fig)


def test_titles_name_models_never_paths(tmp_path, tiny_whisper_dir):
    from distill.models.teacher import load_teacher
    from students.mimic import MimicOptions
    from students.registry import StudentSpec, build_student

    assert readable_name("runs/pipeline-1206b/distill/shared/best") == "shared"
    assert readable_name("/work/teachers/whisper-base/") == "whisper-base"
    assert readable_name("facebook/hubert-base-ls960") == "facebook/hubert-base-ls960"  # a hub id is a name
    assert readable_name("whisper-tiny.en") == "whisper-tiny.en"
    teacher = load_teacher(str(tiny_whisper_dir))
    assert model_title(teacher) == tiny_whisper_dir.name
    student = build_student(StudentSpec(sections={"mimic": MimicOptions(mimic_dim=8)}), teacher)
    folder = tmp_path / "runs" / "mimic-mlp" / "best"
    student.save_pretrained(folder)
    loaded = load_teacher(str(folder))
    assert str(folder) in loaded.name  # the loader names it by its path ...
    assert model_title(loaded) == f"mimic-mlp (student of {tiny_whisper_dir.name})"  # ... the title does not


def test_suite_task_plot_shows_each_model_with_its_interval_and_the_frontier(tmp_path):
    from tasks.superb.suite import plot_task

    def cell(value, lo, hi):
        return {"metric": "per", "value": value, "higher_is_better": False, "ci95": [lo, hi]}

    suite = {"reference": "teacher", "tasks": ["pr"], "models": {
        "teacher": {"params_total": 8_000_000, "tasks": {"pr": cell(0.20, 0.18, 0.22)}},
        "small": {"params_total": 2_000_000, "tasks": {"pr": cell(0.30, 0.27, 0.33)}},
        "worse": {"params_total": 3_000_000, "tasks": {"pr": cell(0.35, 0.31, 0.39)}}}}
    fig = plot_task(suite, "pr", tmp_path / "suite_pr.png")
    _png_size(tmp_path / "suite_pr.png", fig)
    (ax,) = fig.axes
    assert "PR" in ax.get_title() and "teacher" in ax.get_title() and "lower is better" in ax.get_ylabel()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    spans = sorted(v for c in bars for v in c.lines[2][0].get_segments()[0][:, 1])
    assert spans == pytest.approx([18.0, 22.0, 27.0, 31.0, 33.0, 39.0])
    (step,) = [line for line in ax.get_lines() if line.get_label().startswith("frontier")]
    assert set(zip(*step.get_data())) == {(2.0, 30.0), (8.0, 20.0)}  # "worse" is larger and worse than "small"
    assert not _texts_outside(fig)
