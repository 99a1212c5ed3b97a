"""SUPERB emotion recognition (IEMOCAP) through s3prl's ``SuperbER`` recipe, one fold per run.

s3prl downloads its session split files at run time; here they are written from the layout
itself (the test session is ``fold + 1``, the other four train and validate, as SUPERB's
split is), into the run's cache folder, so nothing is downloaded. There is no honest synthetic
stand-in for acted emotional speech: only the plumbing is tested, on a tiny IEMOCAP-layout
folder (docs/superb.md).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from tasks.corpora.layouts import require
from tasks.superb.protocol import MetricRecord, RecipeOverrides, SuperbTask, majority_rate, read_yaml

ER_LAYOUT = """  <data>/Session{1..5}/sentences/wav/<dialog>/<utt>.wav
  <data>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt   lines '[start - end]<TAB><utt><TAB><emotion><TAB>[v, a, d]'"""

KEPT = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}  # SUPERB's four classes
_LINE = re.compile(r"^\[[^\]]*\]\t(\S+)\t(\w+)\t")


def kept_sessions(root: Path) -> dict[int, list[tuple[Path, str]]]:
    """``{session: [(wav, emotion), ...]}`` with SUPERB's four classes (exc merged into hap)."""
    sessions = {}
    for n in range(1, 6):
        session = require(root / f"Session{n}", f"IEMOCAP session {n}", ER_LAYOUT)
        items = [(w, KEPT[e]) for w, e in parse_session(session) if e in KEPT]
        if not items:
            raise ValueError(f"{session}: no utterance labelled neu/hap/exc/ang/sad\nexpected layout:\n{ER_LAYOUT}")
        sessions[n] = items
    return sessions


def parse_session(session: Path) -> list[tuple[Path, str]]:
    """``[(wav, emotion), ...]`` of one session, emotions as labelled (every wav needs a line)."""
    out = []
    for wav in sorted((session / "sentences" / "wav").rglob("*.wav")):
        labels = session / "dialog" / "EmoEvaluation" / f"{wav.parent.name}.txt"
        if not labels.is_file():
            raise ValueError(f"{wav}: no label file {labels}\nexpected layout:\n{ER_LAYOUT}")
        found = {m.group(1): m.group(2) for m in map(_LINE.match, labels.read_text().splitlines()) if m}
        if wav.stem not in found:
            raise ValueError(f"{wav}: no line for {wav.stem} in {labels}\nexpected layout:\n{ER_LAYOUT}")
        out.append((wav, found[wav.stem]))
    return out


class EmotionRecognition(SuperbTask):
    name = "er"
    recipe = "SuperbER"
    metric = "accuracy"  # of one fold (--fold); SUPERB's ER figure is the mean over folds 0-4
    higher_is_better = True
    layout = ER_LAYOUT
    default_steps = 300
    default_batch_size = 4
    default_lr = 1e-4

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        root = require(Path(data), "IEMOCAP root (IEMOCAP_full_release)", ER_LAYOUT)
        kept_sessions(root)
        return {"root": root}

    def configure(self, conf: dict, roots: dict[str, Path], overrides: RecipeOverrides) -> None:
        if not 0 <= overrides.fold <= 4:
            raise ValueError(f"ER fold must be 0-4 (the test session is fold + 1), got {overrides.fold}")
        conf["prepare_data"] = {"iemocap": str(roots["root"]), "test_fold": overrides.fold}
        conf["build_batch_sampler"]["train"]["batch_size"] = overrides.batch_size
        self._write_split(kept_sessions(roots["root"]), Path(conf["cache_dir"]), overrides.fold + 1)

    @staticmethod
    def _write_split(sessions: dict, cache_dir: Path, test_session: int) -> None:
        """The split s3prl would download, from the layout: ``test_session`` tests, the others train."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        labels = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
        for part, keep in (("train", lambda n: n != test_session), ("test", lambda n: n == test_session)):
            meta = [{"path": str(w), "label": e, "speaker": w.stem.split("_")[0]}
                    for n, items in sessions.items() if keep(n) for w, e in items]
            (cache_dir / f"test_session{test_session}_{part}_metadata.json").write_text(
                json.dumps({"labels": labels, "meta_data": meta}))

    def read_result(self, target_dir: Path, roots: dict[str, Path], overrides: RecipeOverrides) -> MetricRecord:
        test = read_yaml(target_dir / "evaluate" / "valid_best" / "test" / "result.yaml")
        items = kept_sessions(roots["root"])[overrides.fold + 1]
        counts = Counter(e for _, e in items)
        return MetricRecord(task=self.name, metric=self.metric, value=float(test["accuracy"]), higher_is_better=True,
                            test_n=len(items), chance=majority_rate(counts.values()),
                            extra={"fold": overrides.fold, "test_session": overrides.fold + 1, "test_loss": test.get("loss")})
