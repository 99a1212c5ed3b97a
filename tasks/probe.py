"""Quick probe: how much of a task a frozen model's layers hold, in seconds on CPU.

Frozen hidden states are mean-pooled over valid frames per layer (cached on disk as ``.npz``,
keyed by the model and the data), then a learnable softmax-weighted sum of layers and a linear
classifier are trained on them (SUPERB's featurizer in miniature). Reports accuracy on a held-out
split and the learnt layer weights. Labelled corpora:

* ``keyword``: a Speech Commands train root: label = word folder; speakers split by sha1 hash
  of the ``<speaker>_nohash_`` prefix, so no speaker is in both splits;
* ``speaker``: label = the speaker prefix of the file name; utterances split at random.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.core.protocol import masked_mean
from distill.data.corpus import AudioDataset, SkipTally, collate_audio, list_audio


@dataclass
class ProbeConfig:
    data: str = field(default="", metadata={"help": "labelled corpus (Speech Commands train root)"})
    label: str = field(default="keyword", metadata={"help": "keyword or speaker"})
    max_utterances: int = field(default=1200, metadata={"help": "random subset (0: all)"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of speakers (keyword) or utterances held out"})
    epochs: int = 60
    lr: float = 5e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    cache_dir: str = field(default="", metadata={"help": "feature cache folder (empty: no cache)"})


def _speaker(path: str) -> str:
    return re.sub(r"_nohash_.*$", "", Path(path).name)


def labelled_items(cfg: ProbeConfig):
    """``(items, labels, is_test)`` for the probe's corpus."""
    root = Path(cfg.data)
    items, _ = list_audio(root)
    items = [i for i in items if "_background_noise_" not in i.path]
    if cfg.max_utterances and len(items) > cfg.max_utterances:
        items = sorted(random.Random(cfg.seed).sample(items, cfg.max_utterances), key=lambda i: i.path)
    if cfg.label == "keyword":
        labels = [Path(i.path).parent.name for i in items]
        cut = cfg.test_fraction * 100
        is_test = [int(hashlib.sha1(_speaker(i.path).encode()).hexdigest(), 16) % 100 < cut for i in items]
    elif cfg.label == "speaker":
        labels = [_speaker(i.path) for i in items]
        rng = random.Random(cfg.seed)
        is_test = [rng.random() < cfg.test_fraction for _ in items]
    else:
        raise ValueError(f"probe label must be keyword or speaker, got {cfg.label!r}")
    if not any(is_test) or all(is_test):
        raise ValueError(f"{root}: the probe split left one side empty ({sum(is_test)} test of {len(items)})")
    return items, labels, is_test


@torch.no_grad()
def pooled_features(model, items, batch_size: int = 32, skips: SkipTally | None = None) -> np.ndarray:
    """``(utterances, L+1, dim)`` float32: each layer mean-pooled over valid frames.

    An unreadable file is noted in ``skips`` and its row is NaN (the probe drops it).
    """
    ds = AudioDataset(items, max_samples=None, random_crop=False)
    out = None
    for start in range(0, len(ds), batch_size):
        batch = collate_audio([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        if skips is not None:
            skips.note(batch["skipped"])
        if batch["wav"] is None:
            continue
        states, frame_lengths = model(batch["wav"], batch["lengths"])
        pooled = torch.stack([masked_mean(s.float(), frame_lengths) for s in states], dim=1).numpy()
        if out is None:
            out = np.full((len(ds),) + pooled.shape[1:], np.nan, dtype=np.float32)
        out[batch["indices"]] = pooled
    if out is None:
        raise ValueError("no readable audio among the probe's files")
    return out


def cached_features(model, items, cache_dir: str, key: str, skips: SkipTally | None = None) -> np.ndarray:
    if not cache_dir:
        return pooled_features(model, items, skips=skips)
    digest = hashlib.sha1((key + "\n" + "\n".join(i.path for i in items)).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"features_{digest}.npz"
    if path.is_file():
        return np.load(path, allow_pickle=False)["features"]
    feats = pooled_features(model, items, skips=skips)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, features=feats)
    tmp.replace(path)
    return feats


class LayerWeightedLinear(nn.Module):
    """Softmax-weighted sum of the layers, then a linear classifier."""

    def __init__(self, num_layers: int, dim: int, num_classes: int):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, layers, dim)
        w = torch.softmax(self.layer_logits, 0)
        return self.linear((x * w[None, :, None]).sum(1))


def fit_probe(features: np.ndarray, labels: list[str], is_test: list[bool], cfg: ProbeConfig) -> dict:
    """Train the probe on the train split; accuracy on the test split and the layer weights."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    x = torch.from_numpy(features)
    test = torch.tensor(is_test)
    # standardise each layer with train statistics so layers of different scale compete fairly
    mean = x[~test].mean(0, keepdim=True)
    std = x[~test].std(0, keepdim=True).clamp(min=1e-5)
    x = (x - mean) / std
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    probe = LayerWeightedLinear(x.shape[1], x.shape[2], len(classes))
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xtr, ytr = x[~test], y[~test]
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for start in range(0, len(xtr), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(probe(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((probe(x[test]).argmax(1) == y[test]).float().mean())
        weights = torch.softmax(probe.layer_logits, 0).tolist()
    return {"accuracy": acc, "layer_weights": weights, "classes": len(classes),
            "train": int((~test).sum()), "test": int(test.sum()), "chance": 1.0 / len(classes)}


def run_probe(model, cfg: ProbeConfig, cache_key: str | None = None) -> dict:
    """Probe ``model`` (teacher or student) on ``cfg.data``."""
    items, labels, is_test = labelled_items(cfg)
    skips = SkipTally()
    feats = cached_features(model, items, cfg.cache_dir, cache_key or model.name, skips)
    good = ~np.isnan(feats).any(axis=(1, 2))  # unreadable files: logged, counted, left out
    result = fit_probe(feats[good], [lab for lab, g in zip(labels, good) if g],
                       [t for t, g in zip(is_test, good) if g], cfg)
    return {**result, "files_skipped": int((~good).sum())}
