"""Every workaround stackdistill needs for the s3prl 0.4.18 stack, in one place.

Each patch says which upstream breakage it covers; :func:`apply` is idempotent and is called
before any s3prl recipe runs. Nothing here changes behaviour outside the broken call.
"""

from __future__ import annotations

import functools
from pathlib import Path

_APPLIED = False


def _torchaudio_info_accepts_paths() -> None:
    """torchaudio 2.8's sox backend rejects ``PosixPath`` in ``torchaudio.info``; s3prl's KS recipe
    (``gsc1_for_classification``, the ``_silence_`` crops) passes the ``Path`` objects it globbed."""
    import torchaudio

    if getattr(torchaudio.info, "_stackdistill", False):
        return
    original = torchaudio.info

    @functools.wraps(original)
    def info(uri, *args, **kwargs):
        return original(str(uri) if isinstance(uri, Path) else uri, *args, **kwargs)

    info._stackdistill = True
    torchaudio.info = info


def _pandas_iteritems() -> None:
    """pandas 2 removed ``Series.iteritems``; s3prl's new-API IC recipe still calls it."""
    import pandas as pd

    if not hasattr(pd.Series, "iteritems"):
        pd.Series.iteritems = pd.Series.items


def _pseudo_wavs_keep_the_seed() -> None:
    """s3prl's ``get_pseudo_wavs`` (run while the featurizer is built, after the runner seeded
    itself from ``train.seed`` and before the downstream head exists) calls ``random.seed(0)`` and
    ``torch.manual_seed(0)``: every downstream seed gave the same head and the same figures. The
    wrapped call leaves the global random states as it found them, so ``--seed`` / ``--seeds`` count."""
    import random

    import torch
    from s3prl.nn import upstream as nn_upstream
    from s3prl.upstream import utils as upstream_utils
    from s3prl.util import pseudo_data

    original = pseudo_data.get_pseudo_wavs
    if getattr(original, "_stackdistill", False):
        return

    @functools.wraps(original)
    def get_pseudo_wavs(*args, **kwargs):
        py_state, torch_state = random.getstate(), torch.random.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            return original(*args, **kwargs)
        finally:
            random.setstate(py_state)
            torch.random.set_rng_state(torch_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)

    get_pseudo_wavs._stackdistill = True
    for module in (pseudo_data, nn_upstream, upstream_utils):
        module.get_pseudo_wavs = get_pseudo_wavs


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    _torchaudio_info_accepts_paths()
    _pandas_iteritems()
    _pseudo_wavs_keep_the_seed()
    _APPLIED = True
