"""SUPERB speaker identification (VoxCeleb1) through s3prl's ``SuperbSID`` recipe.

s3prl reads the identification split from ``$HOME/.cache/s3prl/iden_split.txt`` and runs
``wget`` when it is missing (an empty file left behind breaks every later run). Here the split
file comes from the data root, ``<data>/iden_split.txt``: the recipe's corpus reader is pointed
at it for the run, nothing is downloaded and nothing in ``$HOME`` is touched.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from pathlib import Path

from tasks.corpora.layouts import require
from tasks.superb.protocol import MetricRecord, RecipeOverrides, SuperbTask, majority_rate, read_yaml

SID_LAYOUT = """  <data>/iden_split.txt                           lines '<1|2|3> idXXXXX/<video>/<utt>.wav' (train, valid, test)
  <data>/{dev,test}/wav/idXXXXX/<video>/<utt>.wav  every file the split names, found once under <data>/*/wav/"""


def read_split(path: Path) -> list[tuple[int, str]]:
    """``[(code, uid), ...]`` from a VoxCeleb1 ``iden_split.txt``; ``ValueError`` on a bad line."""
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("1", "2", "3"):
            raise ValueError(f"{path}:{i}: expected '<1|2|3> idXXXXX/<video>/<utt>.wav', got {line!r}")
        rows.append((int(parts[0]), parts[1]))
    return rows


class SpeakerIdentification(SuperbTask):
    name = "sid"
    recipe = "SuperbSID"
    metric = "accuracy"
    higher_is_better = True
    layout = SID_LAYOUT
    default_steps = 300
    default_batch_size = 8
    default_lr = 1e-3

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        root = require(Path(data), "VoxCeleb1 root", SID_LAYOUT)
        split_file = require(root / "iden_split.txt", "VoxCeleb1 identification split file", SID_LAYOUT)
        rows = read_split(split_file)
        if not rows:
            raise ValueError(f"{split_file} is empty\nexpected layout:\n{SID_LAYOUT}")
        found = Counter(p.relative_to(p.parents[2]).as_posix() for p in root.glob("*/wav/*/*/*.wav"))
        twice = [uid for uid, n in found.items() if n > 1]
        if twice:
            raise ValueError(f"{len(twice)} files are under more than one of {root}/*/wav/ (first: {twice[0]}); "
                             "s3prl needs each exactly once")
        missing = [uid for _, uid in rows if uid not in found]
        if missing:
            raise ValueError(f"{len(missing)} of {len(rows)} files in {split_file} are missing under {root}/*/wav/ "
                             f"(first: {missing[0]})\nexpected layout:\n{SID_LAYOUT}")
        codes = {code for code, _ in rows}
        if codes != {1, 2, 3}:
            raise ValueError(f"{split_file} lacks split(s) {sorted({1, 2, 3} - codes)} (1 train, 2 valid, 3 test)")
        return {"root": root, "split": split_file}

    def configure(self, conf: dict, roots: dict[str, Path], overrides: RecipeOverrides) -> None:
        conf["prepare_data"] = {"dataset_root": str(roots["root"]), "n_jobs": 1}
        conf["build_batch_sampler"]["train"]["batch_size"] = overrides.batch_size

    @contextlib.contextmanager
    def running(self, roots: dict[str, Path]):
        """While the recipe runs, its VoxCeleb1 reader takes the split file from the data root."""
        from s3prl.problem.common import superb_sid

        original = superb_sid.VoxCeleb1SID
        superb_sid.VoxCeleb1SID = functools.partial(original, cache_root=roots["split"].parent)
        try:
            yield
        finally:
            superb_sid.VoxCeleb1SID = original

    def read_result(self, target_dir: Path, roots: dict[str, Path], overrides: RecipeOverrides) -> MetricRecord:
        test = read_yaml(target_dir / "evaluate" / "valid_best" / "test" / "result.yaml")
        rows = [uid for code, uid in read_split(roots["split"]) if code == 3]
        per_speaker = Counter(uid.split("/")[0] for uid in rows)
        return MetricRecord(task=self.name, metric=self.metric, value=float(test["accuracy"]), higher_is_better=True,
                            test_n=len(rows), chance=majority_rate(per_speaker.values()),
                            extra={"speakers": len(per_speaker), "test_loss": test.get("loss")})
