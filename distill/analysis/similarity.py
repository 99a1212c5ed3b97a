"""Similarity between two sets of representations of the same n samples.

Each function takes ``x (n, d1)`` and ``y (n, d2)`` (torch tensors or numpy arrays, rows in the
same sample order) and returns a float. Computation is in float64.

* :func:`cosine`: mean over samples of the cosine between corresponding rows (d1 == d2).
* :func:`linear_cka`: linear CKA (Kornblith et al. 2019) with the biased HSIC estimator, or the
  unbiased one (Song et al. 2012) when ``unbiased=True``.
* :func:`mutual_knn`: mutual k-nearest-neighbour alignment (Huh et al. 2024, "platonic
  representations"): neighbours by inner product, self excluded; the mean overlap fraction of
  each sample's k neighbours in x and in y.
* :func:`distance_correlation`: Székely's distance correlation (biased V-statistic) on
  Euclidean distances; CoMFLP ranks with its square, which orders pairs the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from distill.core.protocol import masked_mean


def _as64(a) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    if t.dim() != 2:
        raise ValueError(f"expected a (samples, features) matrix, got shape {tuple(t.shape)}")
    return t.detach().to(torch.float64)


def _as_matrix(a) -> torch.Tensor:
    """A ``(samples, features)`` tensor in its own floating type (float32 stays float32)."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).detach()
    if t.dim() != 2:
        raise ValueError(f"expected a (samples, features) matrix, got shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.double()


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as64(x), _as64(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    return x, y


def cosine(x, y) -> float:
    x, y = _pair(x, y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"cosine needs equal widths, got {x.shape[1]} and {y.shape[1]}")
    return float(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12).mean())


def _center_gram(k: torch.Tensor) -> torch.Tensor:
    """H K H for the centring matrix H (equals the Gram matrix of column-centred features)."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    term1 = (k * l).sum()
    term2 = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return (term1 + term2 - term3) / (n * (n - 3))


def cka_from_grams(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> float:
    """Linear CKA from the raw Gram matrices ``x x^T`` and ``y y^T`` (n x n)."""
    if unbiased:
        if k.shape[0] < 4:
            raise ValueError("the unbiased HSIC estimator needs at least 4 samples")
        xy, xx, yy = _hsic_unbiased(k, l), _hsic_unbiased(k, k), _hsic_unbiased(l, l)
        return float(xy / torch.sqrt(xx * yy).clamp(min=1e-300))
    kc, lc = _center_gram(k), _center_gram(l)
    return float((kc * lc).sum() / torch.sqrt((kc * kc).sum() * (lc * lc).sum()).clamp(min=1e-300))


def linear_cka(x, y, unbiased: bool = False) -> float:
    x, y = _pair(x, y)
    if unbiased or x.shape[0] < max(x.shape[1], y.shape[1]):  # n x n Gram matrices are the smaller route
        return cka_from_grams(x @ x.T, y @ y.T, unbiased)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    return float(cross / torch.sqrt((x.T @ x).pow(2).sum() * (y.T @ y).pow(2).sum()).clamp(min=1e-300))


def knn_from_gram(k: torch.Tensor, n_neighbours: int) -> torch.Tensor:
    """Indices ``(n, n_neighbours)`` of each sample's nearest neighbours by inner product, self excluded."""
    n = k.shape[0]
    if not 1 <= n_neighbours < n:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} samples, got {n_neighbours}")
    sim = k.clone()
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(n_neighbours, dim=1).indices


def knn_overlap(nx: torch.Tensor, ny: torch.Tensor) -> float:
    """Mean fraction of shared neighbours between two neighbour index sets ``(n, k)``."""
    n, k = nx.shape
    hits = torch.zeros(n, n, dtype=torch.bool)
    hits.scatter_(1, nx, True)
    return float((hits.gather(1, ny).sum(1).to(torch.float64) / k).mean())


def mutual_knn(x, y, k: int = 10) -> float:
    x, y = _pair(x, y)
    return knn_overlap(knn_from_gram(x @ x.T, k), knn_from_gram(y @ y.T, k))


def centered_distances_from_gram(k: torch.Tensor) -> torch.Tensor:
    """Double-centred Euclidean distance matrix from a Gram matrix ``x x^T``."""
    sq = k.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * k).clamp(min=0).sqrt()
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def dcor_from_centered(a: torch.Tensor, b: torch.Tensor) -> float:
    dcov_xy, dvar_x, dvar_y = (a * b).mean(), (a * a).mean(), (b * b).mean()
    denom = torch.sqrt(dvar_x * dvar_y)
    if denom <= 0:
        return 0.0
    return float(torch.sqrt((dcov_xy / denom).clamp(min=0.0)))


def distance_correlation(x, y) -> float:
    x, y = _pair(x, y)
    return dcor_from_centered(centered_distances_from_gram(x @ x.T), centered_distances_from_gram(y @ y.T))


MEASURES = {"cosine": cosine, "linear_cka": linear_cka, "mutual_knn": mutual_knn,
            "distance_correlation": distance_correlation}


# -- layer x layer matrices over a whole model ---------------------------------------------------

GRANULARITIES = ("utterance", "frames", "crops")
MODES = ("minibatch", "whole")


@dataclass
class SimilaritySettings:
    measures: list[str] = field(default_factory=lambda: list(MEASURES), metadata={"help": "measures to compute"})
    granularity: str = field(default="utterance",
                             metadata={"help": "utterance (mean over valid frames), frames, or crops (flattened)"})
    mode: str = field(default="minibatch", metadata={"help": "minibatch (average over batches) or whole"})
    batch_size: int = field(default=128, metadata={"help": "samples per mini-batch (the paper's 128)"})
    max_batches: int = field(default=20, metadata={"help": "mini-batches averaged (the paper's 20)"})
    max_samples: int = field(default=2048, metadata={"help": "whole mode: samples kept (reservoir beyond)"})
    frames_per_utterance: int = field(default=8, metadata={"help": "frames mode: random valid frames per utterance"})
    crop_frames: int = field(default=49, metadata={"help": "crops mode: frames per crop (49 = 1 s at 20 ms)"})
    knn_k: int = field(default=10, metadata={"help": "neighbours for mutual k-NN"})
    cka_unbiased: bool = field(default=False, metadata={"help": "unbiased HSIC estimator for CKA"})
    l2_normalize: bool = field(default=False, metadata={"help": "L2-normalise each sample first (as CoMFLP does)"})
    seed: int = 0


def check_similarity_settings(s: SimilaritySettings, utterances: int | None = None, flag: str = "--similarity.",
                              source: str = "") -> None:
    """Raise ``ValueError`` naming the flag for settings that would otherwise fail after the model ran.

    ``flag`` is the prefix of the settings' flags (``--similarity.``); ``utterances`` how many
    utterances the data gives (``None``: unknown, only the settings are checked) and ``source``
    how the message names them (e.g. ``"the 32 utterances analysed (--max_utterances 32)"``).
    """
    unknown = [m for m in s.measures if m not in MEASURES]
    if not s.measures or unknown:
        raise ValueError(f"{flag}measures: unknown {unknown or 'none given'}; known: {', '.join(MEASURES)}")
    if s.granularity not in GRANULARITIES:
        raise ValueError(f"{flag}granularity must be one of {', '.join(GRANULARITIES)}, got {s.granularity!r}")
    if s.mode not in MODES:
        raise ValueError(f"{flag}mode must be one of {', '.join(MODES)}, got {s.mode!r}")
    counts = {"frames": ["frames_per_utterance"], "crops": ["crop_frames"]}.get(s.granularity, [])
    if s.mode == "minibatch":
        counts.append("max_batches")
    for name in counts:
        if getattr(s, name) < 1:
            raise ValueError(f"{flag}{name} must be at least 1, got {getattr(s, name)}")
    size_name = "batch_size" if s.mode == "minibatch" else "max_samples"
    size = getattr(s, size_name)
    least = 4 if s.cka_unbiased and "linear_cka" in s.measures else 2
    if size < least:
        why = " (the unbiased CKA estimator needs 4)" if least == 4 else ""
        raise ValueError(f"{flag}{size_name} {size} must be at least {least}{why}")
    if "mutual_knn" in s.measures and not 1 <= s.knn_k < size:
        raise ValueError(f"{flag}knn_k {s.knn_k} must lie in [1, {size - 1}]: at least 1 and below "
                         f"{flag}{size_name} {size}, the samples each mutual k-NN matrix is built from")
    if utterances is not None:
        _check_against_data(s, utterances, flag, source or f"the {utterances} utterances", least)


def _check_against_data(s: SimilaritySettings, utterances: int, flag: str, source: str, least: int) -> None:
    """The settings that need a number of samples the data can give (frames mode: at most F per utterance)."""
    per = s.frames_per_utterance if s.granularity == "frames" else 1
    available = utterances * per
    have = source if per == 1 else f"the at most {available} frames of {source} ({flag}frames_per_utterance {per})"
    if s.mode == "minibatch" and s.batch_size > available:
        raise ValueError(f"{flag}batch_size {s.batch_size} is more than {have}: not one mini-batch would fill; "
                         f"lower it or give more audio")
    if s.mode == "whole":
        n = min(available, s.max_samples)
        if n < least:
            raise ValueError(f"{have}: too few for a similarity matrix (at least {least} samples)")
        if "mutual_knn" in s.measures and s.knn_k >= n:
            raise ValueError(f"{flag}knn_k {s.knn_k} must be below {have}")


def layer_samples(states: list[torch.Tensor], frame_lengths: torch.Tensor, settings: SimilaritySettings,
                  rng: random.Random) -> list[torch.Tensor]:
    """Turn hidden states ``[(batch, frames, dim)] * (L+1)`` into samples ``[(n, features)] * (L+1)``.

    The same utterances, frames or crops (same order) are taken from every layer.
    """
    samples = _raw_layer_samples(states, frame_lengths, settings, rng)
    if settings.l2_normalize:
        samples = [torch.nn.functional.normalize(x, dim=1, eps=1e-12) for x in samples]
    return samples


def _raw_layer_samples(states, frame_lengths, settings: SimilaritySettings, rng: random.Random):
    g = settings.granularity
    if g == "utterance":
        return [masked_mean(s, frame_lengths) for s in states]
    if g == "frames":
        picks = []
        for b, n in enumerate(frame_lengths.tolist()):
            for t in sorted(rng.sample(range(n), min(n, settings.frames_per_utterance))):
                picks.append((b, t))
        rows, cols = torch.tensor([p[0] for p in picks]), torch.tensor([p[1] for p in picks])
        return [s[rows, cols] for s in states]
    if g == "crops":  # each utterance's first crop_frames frames, zero beyond its length, flattened
        c = settings.crop_frames
        out = []
        for s in states:
            crop = s[:, :c]
            if crop.shape[1] < c:
                crop = torch.nn.functional.pad(crop, (0, 0, 0, c - crop.shape[1]))
            valid = torch.arange(c, device=s.device)[None, :] < frame_lengths.to(s.device)[:, None]
            out.append((crop * valid.unsqueeze(-1).to(crop.dtype)).flatten(1))
        return out
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {g!r}")


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x x^T`` ``(n, n)`` in float64 from ``x (n, d)`` with the wide product in float32.

    The columns are centred first and the mean's part added back in float64 (``x = xc + 1 mu^T``:
    ``x x^T = xc xc^T + (xc mu) 1^T + 1 (xc mu)^T + |mu|^2``), so a large offset shared by every
    sample (Whisper's position table in a crop) costs no precision in the centred measures.
    """
    mu = x.double().mean(0)
    xc = (x - mu.to(x.dtype)).float()
    v = xc.double() @ mu
    return (xc @ xc.T).double() + v[:, None] + v[None, :] + mu @ mu


def _paired_cosines(feats: list[torch.Tensor], norms: list[torch.Tensor], chunk: int = 32) -> np.ndarray:
    """``(layers, layers)`` mean over samples of the cosine between the same sample in two layers.

    One batched float32 product over samples (``(n, layers, d) @ (n, d, layers)``, in chunks of
    samples) instead of an element-wise product per pair of layers, which dominated the cost on
    wide samples (flattened crops). Layers of different widths get NaN (no cosine between them).
    """
    n_layers, n = len(feats), feats[0].shape[0]
    out = np.full((n_layers, n_layers), np.nan)
    by_width: dict[int, list[int]] = {}
    for i, f in enumerate(feats):
        by_width.setdefault(f.shape[1], []).append(i)
    for layers in by_width.values():
        norm = torch.stack([norms[i] for i in layers], 1).clamp(min=1e-12)  # (n, m)
        total = torch.zeros(len(layers), len(layers), dtype=torch.float64)
        for start in range(0, n, chunk):
            x = torch.stack([feats[i][start:start + chunk].float() for i in layers], 1)  # (c, m, d)
            inner = torch.bmm(x, x.transpose(1, 2)).double()  # (c, m, m)
            u = norm[start:start + chunk]
            total += (inner / (u[:, :, None] * u[:, None, :])).sum(0)
        out[np.ix_(layers, layers)] = (total / n).numpy()
    return out


def matrices_from_samples(samples: list[torch.Tensor], settings: SimilaritySettings) -> dict[str, np.ndarray]:
    """``{measure: (L+1, L+1) matrix}`` for one set of samples ``[(n, features)] * (L+1)``.

    One pass per layer: its Gram matrix ``x x^T`` (n x n, :func:`_gram`: the wide product in
    float32, the result in float64), from which linear CKA, the k-NN sets and the centred
    distances all follow; the cosines from one batched product over every layer
    (:func:`_paired_cosines`). The per-pair work is then on n x n matrices only, whatever the
    width of a sample (a flattened crop is crop_frames x dim wide).
    """
    need = set(settings.measures)
    unknown = need - set(MEASURES)
    if unknown:
        raise ValueError(f"unknown measure(s) {sorted(unknown)}; known: {sorted(MEASURES)}")
    feats = [_as_matrix(s) for s in samples]
    n_layers = len(feats)
    grams = [_gram(f) for f in feats]
    knn = [knn_from_gram(k, settings.knn_k) for k in grams] if "mutual_knn" in need else None
    dist = [centered_distances_from_gram(k) for k in grams] if "distance_correlation" in need else None
    cos = _paired_cosines(feats, [k.diagonal().sqrt() for k in grams]) if "cosine" in need else None
    out = {m: np.eye(n_layers) for m in settings.measures}
    for a in range(n_layers):
        for b in range(a + 1, n_layers):
            values = {}
            if "cosine" in need:
                values["cosine"] = float(cos[a, b])
            if "linear_cka" in need:
                values["linear_cka"] = cka_from_grams(grams[a], grams[b], settings.cka_unbiased)
            if "mutual_knn" in need:
                values["mutual_knn"] = knn_overlap(knn[a], knn[b])
            if "distance_correlation" in need:
                values["distance_correlation"] = dcor_from_centered(dist[a], dist[b])
            for m, v in values.items():
                out[m][a, b] = out[m][b, a] = v
    return out


class SimilarityAccumulator:
    """Streams hidden states in; memory stays bounded by ``batch_size`` (minibatch mode) or
    ``max_samples`` (whole mode, reservoir sampling) whatever the amount of audio."""

    def __init__(self, settings: SimilaritySettings):
        if settings.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {settings.mode!r}")
        if settings.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {settings.granularity!r}")
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.buffer: list[list[torch.Tensor]] | None = None  # per layer, a list of sample rows
        self.seen = 0  # samples offered (for the reservoir)
        self.filled = 0  # minibatch mode: rows in the mini-batch being filled
        self.sums: dict[str, np.ndarray] | None = None
        self.batches = 0
        self.utterances = 0
        self.frames = 0

    @property
    def done(self) -> bool:
        return self.s.mode == "minibatch" and self.batches >= self.s.max_batches

    def add(self, states: list[torch.Tensor], frame_lengths: torch.Tensor) -> None:
        if self.done:
            return
        self.utterances += len(frame_lengths)
        self.frames += int(frame_lengths.sum())
        samples = [x.detach().cpu() for x in layer_samples(states, frame_lengths, self.s, self.rng)]
        if self.buffer is None:
            self.buffer = [[] for _ in samples]
        if self.s.mode == "minibatch":  # whole blocks of rows: no per-row copies of wide samples
            start, n = 0, samples[0].shape[0]
            while start < n and not self.done:
                take = min(n - start, self.s.batch_size - self.filled)
                for layer, x in zip(self.buffer, samples):
                    layer.append(x[start:start + take])
                self.filled += take
                start += take
                if self.filled >= self.s.batch_size:
                    self._flush()
            return
        for i in range(samples[0].shape[0]):
            self._offer([x[i] for x in samples])

    def _offer(self, rows: list[torch.Tensor]) -> None:
        """Whole mode: one sample into the reservoir of ``max_samples``."""
        self.seen += 1
        if len(self.buffer[0]) < self.s.max_samples:
            for layer, r in zip(self.buffer, rows):
                layer.append(r)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.s.max_samples:
                for layer, r in zip(self.buffer, rows):
                    layer[j] = r

    def _flush(self) -> None:
        mats = matrices_from_samples([torch.cat(layer) for layer in self.buffer], self.s)
        if self.sums is None:
            self.sums = {m: np.zeros_like(v) for m, v in mats.items()}
        for m, v in mats.items():
            self.sums[m] += v
        self.batches += 1
        self.buffer = [[] for _ in self.buffer]
        self.filled = 0

    def result(self) -> dict[str, np.ndarray]:
        if self.s.mode == "whole":
            if not self.buffer or len(self.buffer[0]) < 2:
                raise ValueError("too little audio for a similarity matrix (need at least 2 samples)")
            self.batches = 1
            return matrices_from_samples([torch.stack(layer) for layer in self.buffer], self.s)
        if self.batches == 0:
            have = self.filled
            raise ValueError(f"not one full mini-batch of {self.s.batch_size} samples (have {have}); "
                             "give more audio or a smaller batch_size")
        return {m: v / self.batches for m, v in self.sums.items()}

    def samples_used(self) -> int:
        return len(self.buffer[0]) if self.s.mode == "whole" else self.batches * self.s.batch_size


@torch.no_grad()
def similarity_matrices(model, batches, settings: SimilaritySettings | None = None, progress: bool = True,
                        skips=None):
    """Stream ``batches`` (dicts with ``wav (batch, samples)`` and ``lengths``) through ``model``.

    Returns ``(matrices, counts)``: ``{measure: (L+1, L+1) array}`` and how many utterances,
    frames, samples and mini-batches were used. Works for teachers and students alike. Files a
    batch dropped as unreadable are noted in ``skips`` (a :class:`distill.data.corpus.SkipTally`).
    """
    from tqdm import tqdm

    settings = settings or SimilaritySettings()
    acc = SimilarityAccumulator(settings)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for batch in tqdm(batches, desc="similarity", disable=not progress):
        if skips is not None:
            skips.note(batch.get("skipped", []))
        if batch.get("wav") is None:
            continue
        states, frame_lengths = model(batch["wav"].to(device), batch["lengths"].to(device))
        acc.add(states, frame_lengths)
        if acc.done:
            break
    mats = acc.result()
    counts = {"utterances": acc.utterances, "frames": acc.frames, "samples": acc.samples_used(),
              "minibatches": acc.batches}
    return mats, counts
