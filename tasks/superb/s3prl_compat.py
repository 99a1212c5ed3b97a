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


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    _torchaudio_info_accepts_paths()
    _pandas_iteritems()
    _APPLIED = True
