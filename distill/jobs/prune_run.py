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

from distill.analysis.blocks import find_blocks
from distill.analysis.comflp import STRATEGIES, coarse_search, fine_search
from distill.analysis.prune import ORDERINGS, block_influence, knn_block_influence, prune, removal_order, save_pruned
from distill.analysis.similarity import SimilaritySettings, check_similarity_settings, similarity_matrices
from distill.core.config import save_config, to_dict
from distill.core.fsutil import claim_run_folder, write_json_atomic
from distill.core.names import model_title
from distill.core.plots import curves
from distill.data.corpus import SkipTally, analysis_batches
from distill.jobs.analyze import check_audio_run, utterances_source
from distill.models.teacher import OFFLINE_DEFAULT, load_teacher
from tasks.probe import ProbeConfig, labelled_items, run_probe
from tasks.superb.evaluate import EvaluateConfig
from tasks.superb.suite import evaluate

METRICS = ("probe", "reconstruction", "ks")


@dataclass
class ComflpConfig:
    n_remove: int = field(default=0, metadata={"help": "layers to remove (0: half of them)"})
    strategy: str = field(default="exact", metadata={
        "help": "coarse search: exact (true top-K at any depth), exhaustive (enumerate), greedy or beam"})
    top_k: int = field(default=10, metadata={"help": "proposals built in the fine search"})
    beam: int = field(default=10, metadata={"help": "beam width"})
    measure: str = field(default="distance_correlation", metadata={"help": "correlation between hidden states"})


@dataclass
class PruneConfig:
    teacher: str = field(default=OFFLINE_DEFAULT, metadata={"help": "teacher spec"})
    data: list[str] = field(default_factory=list, metadata={"help": "unlabeled audio for correlations"})
    out: str = field(default="runs/prune", metadata={"help": "output folder"})
    overwrite: bool = field(default=False, metadata={"help": "write over an earlier run in out (else refused)"})
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
            raise ValueError("--metric ks needs --ks.data <Speech Commands root>")

        def ks_valid_accuracy(model, removed) -> float:
            tag = "full" if not removed else "without_" + "_".join(map(str, removed))
            folder = out / "candidates" / tag
            if removed:
                save_pruned(model, folder / "model")
            spec = str(folder / "model") if removed else cfg.teacher
            # select on s3prl's validation split: the test set stays untouched by the search
            value = evaluate(replace(cfg.ks, model=spec, out=str(folder / "ks"), overwrite=True))["valid_best_accuracy"]
            if value is None:
                raise RuntimeError(f"s3prl wrote no validation accuracy under {folder / 'ks'}")
            return value
        return ks_valid_accuracy, True, "KS validation accuracy (s3prl)"
    if cfg.metric == "probe":
        if not cfg.probe.data:
            raise ValueError("--metric probe needs --probe.data <Speech Commands train root>")
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
    raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {cfg.metric!r}")


def check_metric(cfg: PruneConfig) -> None:
    """``--metric`` and the data it needs (listed, headers only: the probe's split must leave both sides)."""
    if cfg.metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {cfg.metric!r}")
    if cfg.metric == "probe":
        if not cfg.probe.data:
            raise ValueError("--metric probe needs --probe.data <Speech Commands train root> "
                             "(or --metric reconstruction, which needs no labels)")
        if not Path(cfg.probe.data).exists():
            raise ValueError(f"--probe.data {cfg.probe.data}: not found")
        if cfg.probe.label not in ("keyword", "speaker"):
            raise ValueError(f"--probe.label must be keyword or speaker, got {cfg.probe.label!r}")
        if not 0 < cfg.probe.test_fraction < 1:
            raise ValueError(f"--probe.test_fraction must lie between 0 and 1, got {cfg.probe.test_fraction}")
        for name in ("epochs", "batch_size"):
            if getattr(cfg.probe, name) < 1:
                raise ValueError(f"--probe.{name} must be at least 1, got {getattr(cfg.probe, name)}")
        try:
            labelled_items(cfg.probe)
        except ValueError as err:
            raise ValueError(f"--probe.data: {err}") from None
    if cfg.metric == "ks":
        if not cfg.ks.data:
            raise ValueError("--metric ks needs --ks.data <Speech Commands root>")
        from tasks.corpora.layouts import resolve_ks_roots

        try:
            resolve_ks_roots(cfg.ks.data, cfg.ks.test_data)
        except ValueError as err:
            raise ValueError(f"--ks.data: {err}") from None


def check(cfg: PruneConfig, matrices: dict | None = None) -> None:
    """Every setting that can be checked without reading audio or loading the teacher; ``ValueError`` names the flag."""
    if matrices is None:
        check_similarity_settings(cfg.similarity)
    measures = list(matrices) if matrices is not None else cfg.similarity.measures
    among = "the measures of the matrices given" if matrices is not None else "--similarity.measures"
    for flag, name in (("--comflp.measure", cfg.comflp.measure), ("--block_measure", cfg.block_measure)):
        if name not in measures:
            raise ValueError(f"{flag} {name} is not among {among} {','.join(measures)}")
    if cfg.comflp.strategy not in STRATEGIES:
        raise ValueError(f"--comflp.strategy must be one of {', '.join(STRATEGIES)}, got {cfg.comflp.strategy!r}")
    for flag, value, least in (("--comflp.n_remove", cfg.comflp.n_remove, 0), ("--comflp.top_k", cfg.comflp.top_k, 1),
                               ("--comflp.beam", cfg.comflp.beam, 1), ("--max_remove", cfg.max_remove, 0)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    unknown = [o for o in cfg.orderings if o not in ORDERINGS]
    if not cfg.orderings or unknown:
        raise ValueError(f"--orderings: unknown {unknown or 'none given'}; known: {', '.join(ORDERINGS)}")
    if "knn_block_influence" in cfg.orderings and cfg.knn_k < 1:
        raise ValueError(f"--knn_k must be at least 1 (neighbours of the knn_block_influence ordering), "
                         f"got {cfg.knn_k}")
    check_audio_run(cfg)
    check_metric(cfg)


def check_utterances(cfg: PruneConfig, utterances: int, matrices: dict | None = None) -> None:
    """The settings the number of utterances must meet (known from the audio headers, before the teacher runs)."""
    source = utterances_source(cfg, utterances)
    if matrices is None:
        check_similarity_settings(cfg.similarity, utterances, source=source)
    if "knn_block_influence" in cfg.orderings and cfg.knn_k >= utterances:
        raise ValueError(f"--knn_k {cfg.knn_k} must be below {source}; lower it, raise --max_utterances or give "
                         "more audio (or leave knn_block_influence out of --orderings)")


def check_depth(cfg: PruneConfig, num_layers: int) -> None:
    """The settings that need the teacher's depth (known once it is loaded, before it runs)."""
    if num_layers < 2:
        raise ValueError(f"{cfg.teacher} has {num_layers} layer(s): nothing to prune")
    for flag, value in (("--max_remove", cfg.max_remove), ("--comflp.n_remove", cfg.comflp.n_remove)):
        if value > num_layers - 1:
            raise ValueError(f"{flag} {value} is more than {num_layers - 1}: at most all but one of the "
                             f"{num_layers} layers can go")


def run_prune(cfg: PruneConfig, matrices: dict | None = None) -> dict:
    """Curves and CoMFLP search; ``matrices`` (``{measure: (L+1, L+1)}``) skips recomputing them."""
    check(cfg, matrices)
    claim_run_folder(cfg.out, overwrite=cfg.overwrite)
    # the audio is listed (headers only) before the teacher loads, so a setting the data cannot meet fails now
    loader, scan_skipped = analysis_batches(cfg.data, cfg.crop_seconds, cfg.batch_seconds, cfg.max_utterances,
                                            cfg.seed)
    check_utterances(cfg, len(loader.dataset), matrices)
    teacher = load_teacher(cfg.teacher)
    num_layers = teacher.num_layers
    check_depth(cfg, num_layers)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.probe.data and not cfg.probe.cache_dir:
        cfg.probe.cache_dir = str(out / "probe_cache")
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
           "layers removed (no retraining)", metric_name, f"pruning {model_title(teacher)}", hline=full)

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
