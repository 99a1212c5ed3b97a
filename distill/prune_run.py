"""``stackdistill prune``: pruning curves for every ordering, and CoMFLP's search.

Output folder::

    config.yaml        resolved settings
    similarity.json    the layer x layer matrices the orderings and the search use
    curve.json         task metric per number of removed layers, per ordering
    curve.png          the redundancy paper's main figure
    search.json        CoMFLP: every candidate, its correlation score and task metric, times
    pruned/            the best CoMFLP model, a Hugging Face folder of the teacher's type
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tasks.evaluate import EvaluateConfig, evaluate
from tasks.probe import ProbeConfig, run_probe

from .analysis import SimilaritySettings, similarity_matrices
from .blocks import find_blocks
from .comflp import STRATEGIES, coarse_search, fine_search
from .config import save_config, to_dict
from .data import SkipTally, analysis_batches
from .fsutil import write_json_atomic
from .plots import curves
from .prune import ORDERINGS, block_influence, knn_block_influence, prune, removal_order, save_pruned
from .teacher import OFFLINE_DEFAULT, load_teacher


@dataclass
class ComflpConfig:
    n_remove: int = field(default=0, metadata={"help": "layers to remove (0: half of them)"})
    strategy: str = field(default="exhaustive", metadata={"help": "exhaustive, greedy or beam"})
    top_k: int = field(default=10, metadata={"help": "proposals built in the fine search"})
    beam: int = field(default=10, metadata={"help": "beam width"})
    measure: str = field(default="distance_correlation", metadata={"help": "correlation between hidden states"})


@dataclass
class PruneConfig:
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher spec"})
    data: list[str] = field(default_factory=list, metadata={"help": "unlabeled audio for correlations"})
    out: str = field(default="runs/prune", metadata={"help": "output folder"})
    metric: str = field(default="probe",
                        metadata={"help": "probe (accuracy), reconstruction (last-layer MSE) or ks (s3prl, valid acc.)"})
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ks: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(steps=200, eval_every=100),
                               metadata={"help": "ks metric: s3prl SuperbKS settings (data = KS root)"})
    orderings: list[str] = field(default_factory=lambda: list(ORDERINGS), metadata={"help": "curve orderings"})
    max_remove: int = field(default=0, metadata={"help": "largest number of removed layers on the curve (0: L-1)"})
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    block_measure: str = field(default="linear_cka", metadata={"help": "matrix for the similarity_block ordering"})
    knn_k: int = field(default=8, metadata={"help": "neighbours of the knn_block_influence ordering (the paper's 8)"})
    comflp: ComflpConfig = field(default_factory=ComflpConfig)
    crop_seconds: float = 4.0
    batch_seconds: float = 40.0
    max_utterances: int = field(default=512, metadata={"help": "utterances for correlations and influence"})
    seed: int = 0


def _metric_fn(cfg: PruneConfig, teacher, batches, out: Path):
    """``(fn(model) -> float, higher_is_better, name)`` for the configured task metric."""
    if cfg.metric == "ks":
        if not cfg.ks.data:
            raise ValueError("the ks metric needs ks.data=<Speech Commands root>")

        def ks_valid_accuracy(model, removed) -> float:
            tag = "full" if not removed else "without_" + "_".join(map(str, removed))
            folder = out / "candidates" / tag
            if removed:
                save_pruned(model, folder / "model")
            spec = str(folder / "model") if removed else cfg.teacher
            # select on s3prl's validation split: the test set stays untouched by the search
            value = evaluate(replace(cfg.ks, model=spec, out=str(folder / "ks")))["valid_best_accuracy"]
            if value is None:
                raise RuntimeError(f"s3prl wrote no validation accuracy under {folder / 'ks'}")
            return value
        return ks_valid_accuracy, True, "KS validation accuracy (s3prl)"
    if cfg.metric == "probe":
        if not cfg.probe.data:
            raise ValueError("the probe metric needs probe.data=<Speech Commands train root>")
        return (lambda model, removed: run_probe(model, cfg.probe)["accuracy"]), True, "probe accuracy"
    if cfg.metric == "reconstruction":
        with torch.no_grad():
            targets = [teacher(b["wav"], b["lengths"]) for b in batches]

        def reconstruction(model, removed) -> float:
            err, n = 0.0, 0
            with torch.no_grad():
                for b, (t_states, fl) in zip(batches, targets):
                    states, _ = model(b["wav"], b["lengths"])
                    mask = torch.arange(fl.max())[None] < fl[:, None]
                    err += float(((states[-1] - t_states[-1]) ** 2).mean(-1)[mask].sum())
                    n += int(mask.sum())
            return err / n
        return reconstruction, False, "last-layer MSE"
    raise ValueError(f"metric must be probe, reconstruction or ks, got {cfg.metric!r}")


def run_prune(cfg: PruneConfig, matrices: dict | None = None) -> dict:
    """Curves and CoMFLP search; ``matrices`` (``{measure: (L+1, L+1)}``) skips recomputing them."""
    if cfg.comflp.strategy not in STRATEGIES:
        raise ValueError(f"comflp.strategy must be one of {STRATEGIES}")
    for name in (cfg.comflp.measure, cfg.block_measure):
        if name not in cfg.similarity.measures:
            raise ValueError(f"measure {name!r} is not among similarity.measures {cfg.similarity.measures}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.probe.data and not cfg.probe.cache_dir:
        cfg.probe.cache_dir = str(out / "probe_cache")
    teacher = load_teacher(cfg.teacher)
    num_layers = teacher.num_layers
    loader, scan_skipped = analysis_batches(cfg.data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances,
                                            cfg.seed)
    skips = SkipTally(scan_skipped)
    batches = []
    for b in loader:
        skips.note(b["skipped"])
        if b["wav"] is not None:
            batches.append(b)

    t0 = time.time()
    if matrices is None:
        mats, counts = similarity_matrices(teacher, batches, cfg.similarity)
    else:
        mats, counts = {m: np.asarray(v) for m, v in matrices.items()}, {"reused": True}
    influence = block_influence(teacher, batches)
    knn_influence = knn_block_influence(teacher, batches, cfg.knn_k) if "knn_block_influence" in cfg.orderings \
        else None
    blocks = find_blocks(mats[cfg.block_measure])
    analysis_seconds = time.time() - t0
    write_json_atomic(out / "similarity.json", {"model": teacher.name, "counts": counts,
                                                "matrices": {m: v.tolist() for m, v in mats.items()},
                                                "blocks": blocks.to_dict(), "block_influence": influence,
                                                "knn_block_influence": knn_influence})
    metric, higher, metric_name = _metric_fn(cfg, teacher, batches[:4], out)

    # pruning curves: one metric per (ordering, number removed); shared prefixes are built once
    max_remove = cfg.max_remove or num_layers - 1
    cache: dict[tuple[int, ...], float] = {}

    def score(removed: tuple[int, ...]) -> float:
        key = tuple(sorted(removed))
        if key not in cache:
            cache[key] = metric(prune(teacher, key) if key else teacher, key)
        return cache[key]

    orders = {name: removal_order(name, num_layers, influence, mats[cfg.block_measure], blocks, knn_influence)
              for name in cfg.orderings}
    todo = {tuple(sorted(o[:k])) for o in orders.values() for k in range(max_remove + 1)}
    for removed in tqdm(sorted(todo, key=len), desc="pruning curves"):
        score(removed)
    curve = {name: {"order": order, "removed": list(range(max_remove + 1)),
                    "metric": [score(tuple(order[:k])) for k in range(max_remove + 1)]}
             for name, order in orders.items()}
    full = curve[cfg.orderings[0]]["metric"][0]
    write_json_atomic(out / "curve.json", {"metric": metric_name, "higher_is_better": higher,
                                           "num_layers": num_layers, "full_model": full, "orderings": curve})
    curves({n: (c["removed"], c["metric"]) for n, c in curve.items()}, out / "curve.png",
           "layers removed (no retraining)", metric_name, f"pruning {teacher.name}", hline=full)

    # CoMFLP: coarse search on the correlation matrix, fine search by the task metric
    n_remove = cfg.comflp.n_remove or max(1, num_layers // 2)
    t1 = time.time()
    proposals = coarse_search(mats[cfg.comflp.measure], n_remove, cfg.comflp.strategy, cfg.comflp.top_k,
                              cfg.comflp.beam)
    coarse_seconds = time.time() - t1
    # build = the removed set itself, so sets already scored on a curve are not rebuilt
    fine = fine_search(proposals, lambda removed: tuple(removed), score, higher)
    best = prune(teacher, fine["best"]["removed"])
    save_pruned(best, out / "pruned")
    search = {"teacher": teacher.name, "num_layers": num_layers, "n_remove": n_remove,
              "settings": to_dict(cfg.comflp), "metric": metric_name, "higher_is_better": higher,
              "full_model_metric": full, "candidates": fine["candidates"], "best": fine["best"],
              "seconds": {"analysis": analysis_seconds, "coarse": coarse_seconds, "fine": fine["seconds"]},
              "pruned_path": str(out / "pruned"), "files_skipped": len(skips), "skipped": skips.reasons}
    write_json_atomic(out / "search.json", search)
    return {"curve": {n: c["metric"] for n, c in curve.items()}, "search": search, "blocks": blocks.to_dict(),
            "block_influence": [float(x) for x in np.asarray(influence)]}
