"""Layer-to-layer distillation losses, averaged over valid frames only.

* ``mse``: mean squared error per frame (the redundancy paper's loss).
* ``l1_cos``: L1 + ``-log sigmoid(cos)`` (DistilHuBERT's loss, Chang et al. 2022).

Which student output regresses which teacher state is the student kind's choice
(``distill_pairs``); :func:`pairs_loss` sums the per-pair losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.protocol import lengths_to_mask

LOSSES = ("mse", "l1_cos")


def layer_loss(pred: torch.Tensor, target: torch.Tensor, frame_lengths: torch.Tensor,
               kind: str = "mse") -> tuple[torch.Tensor, dict[str, float]]:
    """Loss between ``pred`` and ``target`` ``(batch, frames, dim)`` over valid frames.

    Returns ``(loss, parts)`` with ``parts`` the detached components for logging.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    mask = lengths_to_mask(frame_lengths, pred.shape[1]).to(pred.dtype)
    n = mask.sum().clamp(min=1)
    if kind == "mse":
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / n
        return loss, {"mse": float(loss.detach())}
    if kind == "l1_cos":
        l1 = ((pred - target).abs().mean(-1) * mask).sum() / n
        cos = F.cosine_similarity(pred, target, dim=-1)
        cos_term = (-F.logsigmoid(cos) * mask).sum() / n
        return l1 + cos_term, {"l1": float(l1.detach()), "cos": float((cos.detach() * mask).sum() / n)}
    raise ValueError(f"unknown loss {kind!r}; known: {LOSSES}")


def pairs_loss(pairs, frame_lengths: torch.Tensor, kind: str = "mse"):
    """Sum of ``layer_loss(prediction, target)`` over a student's ``[(label, prediction, target), ...]``.

    Returns ``(total, logs)`` with one ``loss_<label>`` entry (and its parts) per pair.
    """
    if not pairs:
        raise ValueError("the student named no (prediction, target) pair to train on")
    total, logs = 0.0, {}
    for label, pred, target in pairs:
        loss, parts = layer_loss(pred, target, frame_lengths, kind)
        total = total + loss
        logs[f"loss_{label}"] = float(loss.detach())
        for name, v in parts.items():
            logs[f"{name}_{label}"] = v
    return total, logs
