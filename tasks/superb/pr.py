"""SUPERB phoneme recognition (LibriSpeech) through s3prl's ``SuperbPR`` recipe.

A frame-wise linear layer trained with CTC on phonemes, phoneme error rate on ``test-clean``.
s3prl turns words into phonemes with its LibriSpeech G2P lexicons, which it downloads at run
time; here they come from the data root (``*lexicon*.txt``, ``WORD PH PH ...`` a line: s3prl's
own ``librispeech-lexicon-200k-g2p.txt`` and ``-allothers-g2p.txt`` for real LibriSpeech, or the
espeak-ng lexicon that ``stackdistill corpus librispeech`` writes).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from tasks.superb.asr import LIBRISPEECH_LAYOUT, SpeechRecognition, librispeech_root

PR_LAYOUT = LIBRISPEECH_LAYOUT + """
  <data>/*lexicon*.txt (or beside <data>)   lines 'WORD PH1 PH2 ...': s3prl's G2P lexicons, every transcript word listed"""


def lexicon_files(root: Path) -> list[Path]:
    found = sorted(root.glob("*lexicon*.txt")) or sorted(root.parent.glob("*lexicon*.txt"))
    if not found:
        raise ValueError(f"no lexicon (*lexicon*.txt) in {root} or {root.parent}\nexpected layout:\n{PR_LAYOUT}")
    return found


def check_lexicon(root: Path, files: list[Path]) -> None:
    """Every word of every transcript has a pronunciation, spelt exactly as s3prl's G2P looks it up
    (the upper-cased transcript word), and no blank line (s3prl's lexicon parser fails on one)."""
    words = set()
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                raise ValueError(f"{f}:{i}: blank line (s3prl's lexicon parser cannot read it)")
            words.add(line.split()[0])
    for trans in root.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            unknown = [w for w in line.upper().split(" ")[1:] if w and w not in words]
            if unknown:
                raise ValueError(f"{trans}: word(s) {unknown[:5]} not in the lexicon {[str(f) for f in files]} "
                                 "(looked up upper-case, as s3prl does)")


class PhonemeRecognition(SpeechRecognition):
    name = "pr"
    recipe = "SuperbPR"
    metric = "per"
    higher_is_better = False
    layout = PR_LAYOUT
    default_steps = 300
    default_batch_size = 16
    default_lr = 1e-2

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        root = librispeech_root(data, self.layout)
        files = lexicon_files(root)
        check_lexicon(root, files)
        return {"root": root, "lexicon": files[0], **{f"lexicon_{i}": f for i, f in enumerate(files[1:], 1)}}

    def configure(self, conf: dict, roots, overrides) -> None:
        super().configure(conf, roots, overrides)
        conf["build_batch_sampler"]["train"].pop("shuffle", None)  # SortedSliceSampler takes none

    @contextlib.contextmanager
    def running(self, roots: dict[str, Path]):
        """While the recipe runs, its G2P reads the data root's lexicon instead of downloading one."""
        from s3prl.problem.asr import superb_pr

        files = [str(v) for k, v in sorted(roots.items()) if k.startswith("lexicon")]
        original = superb_pr.G2P
        superb_pr.G2P = functools.partial(original, file_list=files)
        try:
            yield
        finally:
            superb_pr.G2P = original
