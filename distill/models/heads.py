"""Classification heads as Hugging Face builds them, and Hugging Face classifier folders.

The head is that of Hugging Face's ``*ForSequenceClassification`` and
``WhisperForAudioClassification``: the last hidden state ``(batch, frames, dim)`` through
``projector`` = Linear(D, 256), a mean over the valid frames, then ``classifier`` =
Linear(256, C). A fine-tuned teacher is saved as a standard folder of that architecture's
classification class (:func:`save_hf_classifier`: ``HubertForSequenceClassification``, ...,
``WhisperForAudioClassification``, its ``id2label`` the label list) that transformers loads
alone; :func:`distill.models.teacher.load_teacher` reads it back as a teacher whose ``head`` and
``labels`` ride along (:func:`head_from_hf`, :func:`labels_of`), its encoder states the targets.

Hugging Face's Whisper classifier pools over the 30 s it is always fed; here every model runs
on the clip's own length and pools over its valid frames (as the SSL classifiers do with an
attention mask), so predictions from the saved Whisper folder through transformers on 30 s
padded input can differ. Student classifier folders: :mod:`distill.models.classifier`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from distill.core.fsutil import atomic_dir
from distill.core.protocol import masked_mean

PROJ_SIZE = 256  # Hugging Face's classifier_proj_size default
RELATIVE_SCALE_FLOOR = 1e-3  # standardisation: a spread below this share of a dimension's RMS is no signal


class ClassificationHead(nn.Module):
    """``(last state (batch, frames, dim), frame_lengths (batch,))`` -> logits ``(batch, C)``.

    ``projector`` Linear(D, P) -> mean over valid frames -> ``classifier`` Linear(P, C); with
    ``proj_size=0`` a plain linear classifier on the mean (no projector).

    ``standardize``: the pooled input is first centred and scaled per dimension by statistics of
    the training set (:meth:`fit_standardization`), as scikit-learn's ``StandardScaler`` before a
    logistic regression. A linear classifier on raw frontend output needs it: Whisper's frontend
    output carries the fixed position table, so some dimensions have a large offset shared by
    every utterance and a spread a million times smaller, and gradient descent on such inputs
    learns the class prior long before the discriminative directions (issue 17: the baseline
    predicted the majority class on every test clip). The statistics are buffers, saved with the head.
    """

    def __init__(self, dim: int, num_labels: int, proj_size: int = PROJ_SIZE, standardize: bool = False):
        super().__init__()
        self.dim, self.num_labels, self.proj_size, self.standardize = dim, num_labels, proj_size, standardize
        self.projector = nn.Linear(dim, proj_size) if proj_size else nn.Identity()
        self.classifier = nn.Linear(proj_size or dim, num_labels)
        if standardize:
            self.register_buffer("input_mean", torch.zeros(dim))
            self.register_buffer("input_scale", torch.ones(dim))
            self.register_buffer("input_keep", torch.ones(dim))

    @torch.no_grad()
    def fit_standardization(self, pooled: torch.Tensor) -> None:
        """Set the centring and scaling from ``pooled`` ``(utterances, dim)``: training utterances' mean states.

        A dimension whose spread is below 1e-3 of its root mean square (about float16's resolution
        of its value; the position table's dimensions: an offset of about 3, a spread of 1e-7) is
        dropped (``input_keep`` 0): scaled up, the target cache's float16 rounding of it would be
        all the classifier saw there, noise the float32 test features do not have.
        """
        if not self.standardize:
            raise ValueError("this head was built without standardize=True")
        if pooled.dim() != 2 or pooled.shape[1] != self.dim or pooled.shape[0] < 2:
            raise ValueError(f"standardization needs (utterances >= 2, {self.dim}) pooled states, "
                             f"got {tuple(pooled.shape)}")
        pooled = pooled.double()
        std = pooled.std(0, unbiased=False)
        keep = std > RELATIVE_SCALE_FLOOR * pooled.pow(2).mean(0).sqrt()
        self.input_mean.copy_(pooled.mean(0))
        self.input_scale.copy_(torch.where(keep, std, torch.ones_like(std)))
        self.input_keep.copy_(keep.to(self.input_keep.dtype))

    def forward(self, last: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        if last.dim() != 3:
            raise ValueError(f"the head takes (batch, frames, dim) states, got {tuple(last.shape)}")
        if self.standardize:  # per-dimension affine: the same before or after the mean over frames
            last = (last - self.input_mean) / self.input_scale * self.input_keep
        return self.classifier(masked_mean(self.projector(last), frame_lengths))

    def shape(self) -> dict:
        return {"dim": self.dim, "num_labels": self.num_labels, "proj_size": self.proj_size,
                "standardize": self.standardize}


class StackWithHead(nn.Module):
    """What classification trains: ``(features, frame_lengths) -> logits`` over a frozen frontend.

    ``stack``: the encoder's stack (``None``: a classifier on the frontend output itself);
    ``last_state``: picks the last hidden state from the stack's outputs; ``stack_kwargs``: fixed
    keyword arguments of the stack (a shared student's full depth).
    """

    def __init__(self, stack: nn.Module | None, head: ClassificationHead, last_state=None,
                 stack_kwargs: dict | None = None):
        super().__init__()
        self.stack, self.head = stack, head
        self.last_state = last_state or (lambda outputs: outputs[-1])
        self.stack_kwargs = dict(stack_kwargs or {})

    def forward(self, feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        last = feats if self.stack is None else self.last_state(self.stack(feats, frame_lengths, **self.stack_kwargs))
        return self.head(last, frame_lengths)


def stack_with_head(model, head: ClassificationHead) -> StackWithHead:
    """The trainable part of ``model`` (a teacher or a student) with ``head`` on its last state."""
    if model.frontend is None:
        raise ValueError(f"{model.name}: classification here trains on the frozen frontend's output, and this "
                         "model has no reusable frontend")
    states_from_outputs = getattr(model, "states_from_outputs", None)
    kwargs = model.valid_kwargs() if hasattr(model, "valid_kwargs") else {}
    last = (lambda outputs: states_from_outputs(outputs)[-1]) if states_from_outputs else None
    return StackWithHead(model.stack, head, last, kwargs)


# -- Hugging Face classification folders -------------------------------------------------------------

def _hf_classes():
    from transformers import (
        Data2VecAudioForSequenceClassification,
        HubertForSequenceClassification,
        Wav2Vec2ForSequenceClassification,
        WavLMForSequenceClassification,
        WhisperForAudioClassification,
    )

    return {"wav2vec2": Wav2Vec2ForSequenceClassification, "hubert": HubertForSequenceClassification,
            "wavlm": WavLMForSequenceClassification, "data2vec-audio": Data2VecAudioForSequenceClassification,
            "whisper": WhisperForAudioClassification}


HF_CLASSIFIER_ARCHITECTURES = ("Wav2Vec2ForSequenceClassification", "HubertForSequenceClassification",
                               "WavLMForSequenceClassification", "Data2VecAudioForSequenceClassification",
                               "WhisperForAudioClassification")


def _encoder_state(teacher) -> dict[str, torch.Tensor]:
    """The teacher's encoder weights under the names of its Hugging Face base model."""
    hf = getattr(teacher, "hf_model", None)
    if hf is not None:
        if teacher.arch == "whisper" and not hasattr(hf, "conv1"):  # a whole Whisper model: its encoder
            hf = hf.encoder if hasattr(hf, "encoder") else hf.model.encoder
        return hf.state_dict()
    if teacher.arch == "whisper":  # a CTranslate2 teacher: WhisperEncoder's names are frontend's + stack's
        return {**teacher.frontend.state_dict(), **teacher.stack.state_dict()}
    raise ValueError(f"{teacher.name}: only Hugging Face and CTranslate2 teachers save as classification folders")


def save_hf_classifier(teacher, head: ClassificationHead, labels: list[str], out: str | Path) -> Path:
    """``teacher`` (fine-tuned in place) + ``head`` as a standard Hugging Face classification folder."""
    import copy

    classes = _hf_classes()
    if teacher.arch not in classes or teacher.config is None:
        raise ValueError(f"{teacher.name}: no Hugging Face classification class for architecture {teacher.arch!r}")
    if head.proj_size == 0 or head.standardize:
        raise ValueError("a Hugging Face classification folder needs a projector (proj_size > 0) and no "
                         "input standardization")
    config = copy.deepcopy(teacher.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.classifier_proj_size = head.proj_size
    config.use_weighted_layer_sum = False
    cls = classes[teacher.arch]
    config.architectures = [cls.__name__]
    model = cls(config)
    base = model.encoder if teacher.arch == "whisper" else getattr(model, model.base_model_prefix)
    missing, unexpected = base.load_state_dict(_encoder_state(teacher), strict=False)
    missing = [k for k in missing if "masked_spec_embed" not in k]
    if missing or unexpected:
        raise ValueError(f"{teacher.name}: weights do not fit {cls.__name__} (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.projector.load_state_dict(head.projector.state_dict())
    model.classifier.load_state_dict(head.classifier.state_dict())
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _feature_extractor(teacher.arch, config).save_pretrained(tmp)
        (tmp / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return out


def _feature_extractor(arch: str, config):
    if arch == "whisper":
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                    return_attention_mask=True)


def head_from_hf(model) -> ClassificationHead:
    """The head of a loaded Hugging Face audio classification model, as a :class:`ClassificationHead`."""
    proj, cls = model.projector, model.classifier
    head = ClassificationHead(proj.in_features, cls.out_features, proj.out_features)
    head.projector.load_state_dict(proj.state_dict())
    head.classifier.load_state_dict(cls.state_dict())
    return head


def labels_of(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]
