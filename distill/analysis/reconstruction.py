"""How closely a student reproduces its teacher's states on some audio: per distilled pair, cosine and L1.

The pairs are the student's own (:meth:`students.base.StudentModel.distill_pairs`): what it was
trained to predict, against the teacher state it was trained on, measured over valid frames only.
Run on two kinds of held-out audio (real recordings against synthetic sentences) it tells whether
a student distilled mostly on one kind generalises to the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from distill.core.protocol import TeacherTargets, lengths_to_mask


@torch.no_grad()
def reconstruction(students: dict, teacher, batches, progress: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """Frame-weighted mean cosine and mean absolute error per pair of each student against ``teacher``.

    The teacher runs once per batch for every student.

    Args:
        students: ``{name: student}``, stackdistill students (``frontend``, ``stack``, ``distill_pairs``,
            ``valid_kwargs``).
        teacher: the model whose states they regress (called ``teacher(wav, lengths)``).
        batches: dicts with ``wav (batch, samples)`` and ``lengths (batch,)`` (batches without
            ``wav``, all of whose files were unreadable, are passed over).

    Returns:
        per student ``{label: {"cosine", "l1", "frames"}}`` and under ``"all"`` the mean over its pairs.
    """
    sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in students}
    frames_total = 0
    for student in students.values():
        student.eval()
    for batch in tqdm(batches, desc="reconstruction", disable=not progress):
        if batch.get("wav") is None:
            continue
        wav, lengths = batch["wav"], batch["lengths"]
        states, frame_lengths = teacher(wav, lengths)
        targets = TeacherTargets(states, frame_lengths, getattr(teacher, "final_norm", None))
        mask = lengths_to_mask(frame_lengths, states[0].shape[1]).double()
        for name, student in students.items():
            _add_pairs(sums[name], student, teacher, wav, lengths, targets, mask)
        frames_total += int(frame_lengths.sum())
    if not frames_total:
        raise ValueError("no audio reached the reconstruction measure (every batch empty or unreadable)")
    return {name: _means(pair_sums, frames_total) for name, pair_sums in sums.items()}


def _add_pairs(sums: dict, student, teacher, wav, lengths, targets: TeacherTargets, mask: torch.Tensor) -> None:
    """Add one batch's masked cosine and L1 sums of each of ``student``'s pairs to ``sums``."""
    kwargs = student.valid_kwargs()
    feats, student_lengths = student.frontend(wav, lengths)
    if not torch.equal(student_lengths, targets.frame_lengths):
        raise ValueError(f"{student.name} and {teacher.name} disagree on frame counts "
                         f"({student_lengths.tolist()} against {targets.frame_lengths.tolist()})")
    outputs = student.stack(feats, student_lengths, **kwargs)
    for label, pred, target in student.distill_pairs(outputs, targets, **kwargs):
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1).double()
        l1 = (pred.float() - target.float()).abs().mean(-1).double()
        s = sums.setdefault(label, torch.zeros(2, dtype=torch.float64))
        s[0] += (cos * mask).sum()
        s[1] += (l1 * mask).sum()


def _means(sums: dict, frames: int) -> dict[str, dict[str, float]]:
    result = {label: {"cosine": float(s[0] / frames), "l1": float(s[1] / frames), "frames": frames}
              for label, s in sums.items()}
    pairs = list(result.values())
    result["all"] = {"cosine": sum(r["cosine"] for r in pairs) / len(pairs),
                     "l1": sum(r["l1"] for r in pairs) / len(pairs), "frames": frames}
    return result
