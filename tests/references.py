"""Independent references for tests: figures computed here, from definitions, not by the code under test."""

from __future__ import annotations

import numpy as np
import torch


def utterance_means(model, batches) -> list[np.ndarray]:
    """Each hidden state's mean over the valid frames of every utterance, from the model's own forward
    pass, in float64: ``[(utterances, dim)] * (L + 1)``."""
    per_layer = None
    with torch.no_grad():
        for batch in batches:
            states, frame_lengths = model(batch["wav"], batch["lengths"])
            rows = [[s[b, :n].double().mean(0).numpy() for b, n in enumerate(frame_lengths.tolist())] for s in states]
            per_layer = rows if per_layer is None else [p + r for p, r in zip(per_layer, rows)]
    return [np.stack(r) for r in per_layer]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s linear CKA on column-centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def mean_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """The mean over samples of the cosine between a sample's two representations."""
    return float(np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))


def wilson95(correct: int, n: int) -> tuple[float, float]:
    """scipy's Wilson score interval (95 %)."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def count_of(accuracy: float, n: int) -> int:
    """The number right behind an accuracy over ``n`` items; fails unless it is a whole number."""
    k = round(accuracy * n)
    assert abs(accuracy * n - k) < 1e-6, f"accuracy {accuracy} is not a count over n = {n}"
    return k


def s3prl_ks_validation(target_dir) -> dict[str, float]:
    """s3prl's SuperbKS validation accuracy, recomputed from the ``valid_best`` model it saved.

    Every row of ``valid.csv`` (silence rows: their one-second window) is read with soundfile, given
    the recipe's -3 dB gain and classified alone. ``each_once`` is the accuracy over the rows;
    ``balanced_draw`` over the draw s3prl's recipe validates on: as many indices as rows, with
    replacement, each row weighted by 1 / (rows of its label), from a generator seeded 12345678 (the
    sampler's default seed, at epoch 0, which the trainer never advances for validation).
    """
    import csv
    from pathlib import Path

    import soundfile as sf
    from s3prl.problem import SuperbKS
    from torch.utils.data import WeightedRandomSampler

    from tasks.superb.s3prl_compat import apply
    from tasks.superb.s3prl_upstream import register

    register()
    apply()
    target_dir = Path(target_dir)
    _, task = SuperbKS().load_model_and_task(str(target_dir / "train" / "valid_best"))
    task.eval()
    with open(target_dir / "valid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    right = []
    with torch.no_grad():
        for row in rows:
            window = {}
            if row["start_sec"]:
                window = {"start": round(float(row["start_sec"]) * 16000), "stop": round(float(row["end_sec"]) * 16000)}
            wav, rate = sf.read(row["wav_path"], dtype="float32", **window)
            assert rate == 16000 and wav.ndim == 1
            x = torch.from_numpy(wav)[None, :, None] * 10 ** (-3 / 20)
            _, predicted = task.predict(x, torch.tensor([x.shape[1]]))
            right.append(predicted[0] == row["label"])
    labels = [row["label"] for row in rows]
    weights = [len(labels) / labels.count(label) for label in labels]
    draw = list(WeightedRandomSampler(weights, len(weights), generator=torch.Generator().manual_seed(12345678)))
    return {"each_once": sum(right) / len(right), "balanced_draw": sum(right[i] for i in draw) / len(draw),
            "rows": len(rows), "distinct_drawn": len(set(draw))}
