"""Utterance classification through the one training loop: fine-tuning a teacher, adapting a student.

:func:`finetune_model` trains a model of the protocol plus a classification head
(:mod:`distill.models.classifier`) on a labelled corpus (any object with ``train``, ``valid``,
``test``, ``labels``, ``skipped``, ``task`` and ``counts()``, such as
:class:`tasks.corpora.labelled.LabelledCorpus`; ``stackdistill finetune`` reads one in
:mod:`distill.jobs.finetune_run`): the frontend frozen
(its output computed per batch, or read from the teacher-target cache with ``train.cache``),
the stack and the head trained with cross-entropy (``head_only``: the head alone), the best
checkpoint by validation accuracy. The same code is the redundancy paper's stage 2
("adaptation": a distilled student with the fine-tuned teacher's head), its non-mimicker
baseline (a student with random layers, stage 2 only) and its linear classifier on the
frontend output (:func:`finetune_model` with ``stack=False``).

A teacher (Hugging Face or CTranslate2) is saved as a standard Hugging Face folder of its
classification class; a student as a classifier folder (``encoder/`` + head). Run folder as
for distillation (``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``loss.png``, ``tb/``,
``checkpoints/``, ``best/``, ``last/``), plus ``test.json``: accuracy on the test split with its
size and 95 % Wilson interval.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.core.config import save_config
from distill.core.fsutil import write_json_atomic
from distill.core.names import model_title
from distill.core.protocol import masked_mean
from distill.core.stats import accuracy_record
from distill.data.audio import SAMPLE_RATE
from distill.data.batches import Batch, BatchPlan, CachedSource, OnlineSource
from distill.data.cache import CacheConfig, CacheSpec, prepare_cache
from distill.data.corpus import AudioDataset, LengthBucketBatchSampler, collate_audio
from distill.models.classifier import (
    PROJ_SIZE,
    ClassificationHead,
    StackWithHead,
    load_classifier,
    save_classifier,
    save_hf_classifier,
    stack_with_head,
)
from distill.training.checkpoints import CheckpointManager
from distill.training.loop import Run, TrainConfig, make_accelerator, prepare_trainable, train_loop
from distill.training.ranks import rank0_broadcast

log = logging.getLogger(__name__)


class ClassifyObjective:
    """Cross-entropy on the labels; validation accuracy picks ``best/``."""

    score, higher_is_better = "valid_accuracy", True

    def __init__(self, acc, model, classifier: StackWithHead, source, labels: list[str], save):
        self.acc, self.model, self.classifier, self.source, self.labels, self._save = \
            acc, model, classifier, source, labels, save
        self.index = {label: i for i, label in enumerate(labels)}

    def _targets(self, batch: Batch) -> torch.Tensor:
        if batch.labels is None:
            raise ValueError("classification batches carry no labels (is the corpus labelled?)")
        return torch.tensor([self.index[label] for label in batch.labels], device=batch.inputs.device)

    def loss(self, batch: Batch, step: int, model) -> tuple[torch.Tensor, dict]:
        logits = model(batch.inputs, batch.input_lengths)
        y = self._targets(batch)
        loss = F.cross_entropy(logits, y)
        return (loss * 0.0 if batch.empty else loss), {"accuracy": float((logits.argmax(-1) == y).float().mean())}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        sums = torch.zeros(3, dtype=torch.float64, device=self.acc.device)  # loss x n, right, n
        for batch in self.source.valid_batches():
            logits = model(batch.inputs, batch.input_lengths)
            y = self._targets(batch)
            sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
            sums[1] += float((logits.argmax(-1) == y).sum())
            sums[2] += len(y)
        sums = self.acc.reduce(sums, reduction="sum")
        n = float(sums[2].clamp(min=1))
        return {"valid_loss": float(sums[0]) / n, "valid_accuracy": float(sums[1]) / n}

    def save(self, folder: Path) -> None:
        self._save(folder)

    def summary(self) -> dict:
        return {"labels": self.labels, "model": self.model.info.to_dict(), "trained": self.trained}

    @property
    def title(self) -> str:
        return f"{self.trained} of {model_title(self.model)}"

    @property
    def trained(self) -> str:
        if self.classifier.stack is None:
            return "head on the frontend output"
        return "stack + head" if any(p.requires_grad for p in self.classifier.stack.parameters()) else "head"


def _saver(model, head: ClassificationHead, labels: list[str], stack: bool):
    """How a run writes its model: a teacher as a Hugging Face classification folder, else a classifier folder."""
    from distill.models.teacher import Teacher

    def save(folder: Path) -> None:
        if stack and isinstance(model, Teacher):
            save_hf_classifier(model, head, labels, folder)
        else:
            save_classifier(model, head, labels, folder, reads="last" if stack else "frontend")
    return save


def finetune_model(model, corpus, out: Path, t: TrainConfig, cache: CacheConfig | None = None,
                   head: ClassificationHead | None = None, head_only: bool = False, stack: bool = True,
                   config=None, test_set: "FrontendTestSet | None" = None, overwrite: bool = False) -> dict:
    """Train ``model`` (+ ``head``, new if ``None``) on ``corpus``; writes the run folder and ``test.json``.

    ``stack=False``: a linear classifier on the frontend output (the paper's CNN-features baseline).
    ``test_set``: the test split's frontend output computed once, to score with (else it is run).
    ``overwrite``: write over an earlier run in ``out`` (else refused unless ``t.resume``).
    Returns the summary with ``test`` (accuracy, size, 95 % interval) of the best checkpoint.
    """
    out = Path(out)
    # find_unused_parameters: e.g. a DistilHuBERT student's idle heads
    acc = make_accelerator(out, t, find_unused_parameters=True, overwrite=overwrite)
    labels = corpus.labels
    if head is None:
        head = ClassificationHead(model.info.dim, len(labels), PROJ_SIZE if stack else 0, standardize=not stack)
        if not stack:  # a linear classifier on the frontend output: standardised by the training set's statistics
            model.to(acc.device)
            head.fit_standardization(pooled_frontend_output(model, corpus.train, t.batch_seconds))
    elif head.num_labels != len(labels):
        raise ValueError(f"the head has {head.num_labels} outputs, the corpus {len(labels)} labels")
    head = head.to(acc.device).requires_grad_(True)
    config_of = getattr(model, "config", None)
    if getattr(config_of, "layerdrop", 0.0):  # skipped layers would leave DDP waiting on unused parameters
        log.info("%s: layerdrop %.2f set to 0 for fine-tuning", model.name, config_of.layerdrop)
        config_of.layerdrop = 0.0
    if stack:
        model.stack.requires_grad_(not head_only)
        trainable = stack_with_head(model, head)
    else:
        trainable = StackWithHead(None, head)
    model.to(acc.device)
    if acc.is_main_process and config is not None:
        save_config(config, out / "config.yaml")
    plan = BatchPlan(int(t.batch_seconds * SAMPLE_RATE), t.max_batch_size, t.seed, acc.num_processes,
                     acc.process_index, t.grad_accum)
    crop, min_samples = min(int(t.crop_seconds * SAMPLE_RATE), plan.batch_samples), int(t.min_seconds * SAMPLE_RATE)
    items = corpus.train + corpus.valid
    cache_summary = None
    if t.cache:
        features = prepare_cache(model, items, CacheSpec((), True, crop, min_samples, t.teacher_dtype),
                                 cache or CacheConfig(), acc.process_index, acc.num_processes, acc.wait_for_everyone,
                                 progress=acc.is_local_main_process, broadcast=rank0_broadcast(acc))
        n = len(corpus.train)
        source = CachedSource(features, model, items, list(range(n)), list(range(n, len(items))), plan, [], True,
                              acc.device, t.num_workers)
        cache_summary = {"folder": str(features.folder), "reused": features.reused, "slots": features.slots}
    else:
        source = OnlineSource(model, corpus.train, corpus.valid, plan, crop, min_samples, True, acc.device,
                              t.num_workers, targets=False)
    prepared, optimizer, scheduler = prepare_trainable(acc, trainable, t)
    objective = ClassifyObjective(acc, model, trainable, source, labels, _saver(model, head, labels, stack))
    run = Run(acc, out, t, prepared, optimizer, scheduler, source, objective,
              CheckpointManager(acc, out / "checkpoints", t.keep_checkpoints), config or t, len(items),
              {s.path: s.reason for s in corpus.skipped}, {}, cache_summary)
    summary = train_loop(run)
    best = load_classifier(out / "best").to(acc.device)
    test = test_set.accuracy(best) if test_set is not None else classifier_accuracy(best, corpus.test, t.batch_seconds)
    summary["test"] = test
    if acc.is_main_process:
        write_json_atomic(out / "test.json", {"task": corpus.task, "labels": labels, **test,
                                              "corpus": corpus.counts()})
        write_json_atomic(out / "summary.json", summary)
    return summary


@torch.no_grad()
def classifier_accuracy(model, items, batch_seconds: float = 16.0) -> dict:
    """Accuracy of ``model`` (with ``head`` and ``labels``) on ``items``, with its size and 95 % interval.

    Each utterance is scored on its first ``batch_seconds`` (the whole of a Speech Commands clip).
    """
    index = {label: i for i, label in enumerate(model.labels)}
    budget = int(batch_seconds * SAMPLE_RATE)
    ds = AudioDataset(items, max_samples=budget, random_crop=False)
    sampler = LengthBucketBatchSampler([ds.cropped_length(i) for i in range(len(ds))], budget, shuffle=False)
    device = next(iter(model.parameters())).device
    right = n = 0
    for indices in sampler:
        batch = collate_audio([ds[i] for i in indices])
        if batch["wav"] is None:
            continue
        feats, states, frame_lengths = model.features_and_states(batch["wav"].to(device), batch["lengths"].to(device))
        reads = feats if getattr(model, "head_reads", "last") == "frontend" else states[-1]
        predicted = model.head(reads, frame_lengths).argmax(-1).tolist()
        truth = [index[label] for label in batch["labels"]]
        right += sum(p == y for p, y in zip(predicted, truth))
        n += len(truth)
    return accuracy_record(right, n)


def _frontend_batches(model, items, batch_seconds: float):
    """``(features (batch, frames, dim), frame_lengths (batch,), labels, item indices)`` of ``items`` through
    ``model.frontend``.

    Each utterance on its first ``batch_seconds``; batches in a fixed order (by length).
    """
    budget = int(batch_seconds * SAMPLE_RATE)
    ds = AudioDataset(items, max_samples=budget, random_crop=False)
    sampler = LengthBucketBatchSampler([ds.cropped_length(i) for i in range(len(ds))], budget, shuffle=False)
    device = next(iter(model.parameters())).device
    with torch.no_grad():
        for indices in sampler:
            batch = collate_audio([ds[i] for i in indices])
            if batch["wav"] is not None:
                feats, frame_lengths = model.frontend(batch["wav"].to(device), batch["lengths"].to(device))
                yield feats, frame_lengths, batch["labels"], batch["indices"]


def pooled_frontend_output(model, items, batch_seconds: float = 16.0) -> torch.Tensor:
    """Each utterance's frontend output averaged over its valid frames: ``(utterances, dim)``."""
    pooled = [masked_mean(feats, frame_lengths) for feats, frame_lengths, *_ in
              _frontend_batches(model, items, batch_seconds)]
    if not pooled:
        raise ValueError("no readable utterance to compute frontend statistics from")
    return torch.cat(pooled)


class FrontendTestSet:
    """The test utterances through one frozen frontend, computed once.

    Every model whose frontend has the same weights (a fine-tuned teacher, its students, its
    pruned copies, a classifier on the frontend output: the redundancy paper's protocol) is
    then scored from the stored features, its stack and head only; any other model is run whole.
    """

    def __init__(self, reference, items, batch_seconds: float = 16.0):
        self.reference_state = {k: v.detach().clone() for k, v in reference.frontend.state_dict().items()}
        self.items, self.batch_seconds = items, batch_seconds
        self.batches = list(_frontend_batches(reference, items, batch_seconds))

    def shares_frontend(self, model) -> bool:
        state = model.frontend.state_dict() if model.frontend is not None else {}
        return state.keys() == self.reference_state.keys() and all(
            torch.equal(state[k].cpu(), v.cpu()) for k, v in self.reference_state.items())

    @torch.no_grad()
    def accuracy(self, model) -> dict:
        """Like :func:`classifier_accuracy` (same figures), from the stored frontend output when it applies."""
        if not self.shares_frontend(model):
            return classifier_accuracy(model, self.items, self.batch_seconds)
        index = {label: i for i, label in enumerate(model.labels)}
        right = n = 0
        for item, logits in self.logits(model).items():
            right += int(logits.argmax()) == index[self.items[item].label]
            n += 1
        return accuracy_record(right, n)

    @torch.no_grad()
    def logits(self, model) -> dict[int, torch.Tensor]:
        """``{item index: logits (classes,)}`` of ``model``'s stack and head on the stored frontend output
        (``model`` must share the frontend: :meth:`shares_frontend`)."""
        if not self.shares_frontend(model):
            raise ValueError(f"{getattr(model, 'name', model)} does not share the stored frontend; run it whole")
        reads_frontend = getattr(model, "head_reads", "last") == "frontend"
        scorer = StackWithHead(None, model.head) if reads_frontend else stack_with_head(model, model.head)
        scorer.eval()
        out = {}
        for feats, frame_lengths, _labels, indices in self.batches:
            out.update(zip(indices, scorer(feats, frame_lengths)))
        return out
