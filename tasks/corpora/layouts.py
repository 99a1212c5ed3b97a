"""Dataset layouts on disk: checking a corpus root is where and what it should be, with the layout in the message.

Used by the corpus readers (:mod:`tasks.corpora.labelled`) and the SUPERB task files alike.
"""

from __future__ import annotations

from pathlib import Path


def require(path: Path, what: str, layout: str) -> Path:
    """``path`` if it exists, else a ``ValueError`` naming it, what it is and the layout expected."""
    if not path.exists():
        raise ValueError(f"{what} not found: {path}\nexpected layout:\n{layout}")
    return path


KS_LAYOUT = """  <data>/train/<word>/<speaker>_nohash_<n>.wav   (or <data>/<word>/... directly)
  <data>/train/_background_noise_/*.wav           (>= 1 s each)
  <test_data or data/test>/<label>/*.wav          (yes no up down left right on off stop go _unknown_ _silence_)"""


def resolve_ks_roots(data: str, test_data: str = "") -> tuple[Path, Path]:
    """``(train_root, test_root)`` of a Speech Commands v0.01 corpus, checked."""
    root = require(Path(data), "KS data folder", KS_LAYOUT)
    if not root.is_dir():
        raise ValueError(f"KS data folder is not a folder: {root}\nexpected layout:\n{KS_LAYOUT}")
    train = root / "train" if (root / "train").is_dir() else root
    test = Path(test_data) if test_data else root / "test"
    require(test, "KS test folder (pass test_data=...)", KS_LAYOUT)
    require(train / "_background_noise_", f"{train} is not a Speech Commands v0.01 train root: its "
            "_background_noise_ folder", KS_LAYOUT)
    if not any(test.rglob("*.wav")):
        raise ValueError(f"KS test folder {test} holds no .wav files\nexpected layout:\n{KS_LAYOUT}")
    return train, test
