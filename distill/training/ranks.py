"""What every process of a run must agree on: a value the main process decides, sent to all."""

from __future__ import annotations


def rank0_broadcast(acc):
    """``share(value)``: the main process's ``value`` on every process (a collective: all must call it)."""
    from accelerate.utils import broadcast_object_list

    def share(value):
        if acc.num_processes == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    return share
