"""SUPERB at each model's own best learning rate, over seeds: chosen by validation, never by test."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from distill.core.fsutil import write_json_atomic
from distill.core.stats import wilson
from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.selection import choose_lr, run_selected

# validation prefers lr 1e-3, test would prefer 1e-2: a selection that peeks at test picks wrong
VALID = {1e-4: 0.50, 1e-3: 0.80, 1e-2: 0.70}
TEST = {1e-4: 0.55, 1e-3: 0.60, 1e-2: 0.90}


class FakeRecipe:
    """Stands in for one s3prl run: figures set by (lr, seed), written like run_task writes them."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg) -> dict:
        self.calls.append((cfg.lr, cfg.seed, Path(cfg.out).name))
        value = TEST[cfg.lr] + 0.01 * cfg.seed  # the seed moves the test figure
        metrics = {"model": cfg.model, "task": "ks", "metric": "accuracy", "value": value, "higher_is_better": True,
                   "test_n": 200, "chance": 0.1, "units": None, "ci95": list(wilson(round(value * 200), 200)),
                   "extra": {}, "valid_best_accuracy": VALID[cfg.lr], "steps": cfg.steps, "seconds": 1.0,
                   "lr": cfg.lr, "seed": cfg.seed}
        write_json_atomic(Path(cfg.out) / "metrics.json", metrics)
        return metrics


def test_the_lr_is_chosen_by_validation_and_the_seeds_give_mean_and_sd(tmp_path):
    recipe = FakeRecipe()
    cfg = EvaluateConfig(task="ks", model="m", out=str(tmp_path / "ev"), steps=10, lr_grid=[1e-4, 1e-3, 1e-2],
                         seeds=3, seed=5)
    m = run_selected(cfg, recipe)
    assert m["lr"] == 1e-3 and m["lr_selection"]["chosen"] == 1e-3  # not 1e-2, the test set's favourite
    assert m["lr_selection"]["valid"] == {"0.0001": 0.5, "0.001": 0.8, "0.01": 0.7}
    values = [TEST[1e-3] + 0.01 * s for s in (5, 6, 7)]
    assert m["seed_runs"]["seeds"] == [5, 6, 7] and m["seed_runs"]["values"] == pytest.approx(values)
    assert m["value"] == pytest.approx(statistics.fmean(values)) == m["test_accuracy"]
    assert m["seed_runs"]["sd"] == pytest.approx(statistics.stdev(values))
    assert m["ci95"] == pytest.approx(list(wilson(round(m["value"] * 200), 200)))  # the interval at the mean
    # one run per lr (seed 5), then seeds 6 and 7 at the chosen lr only
    assert sorted(recipe.calls) == sorted([(1e-4, 5, "lr_0.0001"), (1e-3, 5, "lr_0.001"), (1e-2, 5, "lr_0.01"),
                                           (1e-3, 6, "seed_6"), (1e-3, 7, "seed_7")])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == json.loads(json.dumps(m))
    recipe.calls.clear()
    assert run_selected(cfg, recipe)["value"] == m["value"] and recipe.calls == []  # finished runs are reused


def test_lower_is_better_metrics_choose_the_smallest_error_and_ties_keep_grid_order():
    assert choose_lr({1e-3: 0.30, 1e-2: 0.20}, higher_is_better=False) == 1e-2
    assert choose_lr({1e-3: 0.30, 1e-2: 0.20}, higher_is_better=True) == 1e-3
    assert choose_lr({1e-2: 0.5, 1e-3: 0.5}, higher_is_better=True) == 1e-2
    with pytest.raises(ValueError, match="no validation figure"):
        choose_lr({1e-3: None, 1e-2: 0.5}, True)


def test_one_lr_and_one_seed_is_one_run_in_the_folder_itself(tmp_path):
    recipe = FakeRecipe()
    m = run_selected(EvaluateConfig(task="ks", model="m", out=str(tmp_path / "ev"), steps=10, lr=1e-2), recipe)
    assert recipe.calls == [(1e-2, 0, "ev")] and m["value"] == TEST[1e-2] and "lr_selection" not in m
    with pytest.raises(ValueError, match="--lr_grid"):
        run_selected(EvaluateConfig(task="ks", model="m", out=str(tmp_path / "x"), lr_grid=[1e-3, 1e-3]), recipe)
    with pytest.raises(ValueError, match="--seeds"):
        run_selected(EvaluateConfig(task="ks", model="m", out=str(tmp_path / "y"), seeds=-1), recipe)


def test_the_command_line_takes_a_comma_separated_grid():
    from distill.core.config import load_config

    cfg = load_config(EvaluateConfig, None, ["lr_grid=1e-4,1e-3,1e-2", "seeds=3"])
    assert cfg.lr_grid == [1e-4, 1e-3, 1e-2] and cfg.seeds == 3
