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
def reconstruction(student, teacher, batches, progress: bool = True) -> dict[str, dict[str, float]]:
    """Frame-weighted mean cosine and mean absolute error per pair of ``student`` against ``teacher``.

    Args:
        student: a stackdistill student (``frontend``, ``stack``, ``distill_pairs``, ``valid_kwargs``).
        teacher: the model whose states it regresses (called ``teacher(wav, lengths)``).
        batches: dicts with ``wav (batch, samples)`` and ``lengths (batch,)`` (batches without
            ``wav``, all of whose files were unreadable, are passed over).

    Returns:
        ``{label: {"cosine", "l1", "frames"}}`` and under ``"all"`` the mean over the pairs.
    """
    student.eval()
    sums: dict[str, torch.Tensor] = {}
    frames_total = 0
    kwargs = student.valid_kwargs()
    for batch in tqdm(batches, desc=f"reconstruction {student.name}", disable=not progress):
        if batch.get("wav") is None:
            continue
        wav, lengths = batch["wav"], batch["lengths"]
        states, frame_lengths = teacher(wav, lengths)
        feats, student_lengths = student.frontend(wav, lengths)
        if not torch.equal(student_lengths, frame_lengths):
            raise ValueError(f"{student.name} and {teacher.name} disagree on frame counts "
                             f"({student_lengths.tolist()} against {frame_lengths.tolist()})")
        outputs = student.stack(feats, frame_lengths, **kwargs)
        targets = TeacherTargets(states, frame_lengths, getattr(teacher, "final_norm", None))
        mask = lengths_to_mask(frame_lengths, states[0].shape[1]).double()
        for label, pred, target in student.distill_pairs(outputs, targets, **kwargs):
            cos = F.cosine_similarity(pred.float(), target.float(), dim=-1).double()
            l1 = (pred.float() - target.float()).abs().mean(-1).double()
            s = sums.setdefault(label, torch.zeros(2, dtype=torch.float64))
            s[0] += (cos * mask).sum()
            s[1] += (l1 * mask).sum()
        frames_total += int(frame_lengths.sum())
    if not frames_total:
        raise ValueError("no audio reached the reconstruction measure (every batch empty or unreadable)")
    result = {label: {"cosine": float(s[0] / frames_total), "l1": float(s[1] / frames_total),
                      "frames": frames_total} for label, s in sums.items()}
    pairs = list(result.values())
    result["all"] = {"cosine": sum(r["cosine"] for r in pairs) / len(pairs),
                     "l1": sum(r["l1"] for r in pairs) / len(pairs), "frames": frames_total}
    return result
