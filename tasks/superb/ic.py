"""SUPERB intent classification (Fluent Speech Commands) through s3prl's ``SuperbIC`` recipe.

An utterance counts as right only when its action, object and location are all right (s3prl's
accuracy). The recipe's pandas-2 call is patched in :mod:`tasks.superb.s3prl_compat`.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from tasks.corpora.layouts import require
from tasks.superb.protocol import MetricRecord, RecipeOverrides, SuperbTask, majority_rate, read_yaml

IC_LAYOUT = """  <data>/data/{train,valid,test}_data.csv   columns ',path,speakerId,transcription,action,object,location'
  <data>/wavs/speakers/<speaker>/<id>.wav    the 'path' column, relative to <data>"""

COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}\nexpected layout:\n{IC_LAYOUT}")
        return list(reader)


def intent(row: dict) -> str:
    return f"{row['action']} ; {row['object']} ; {row['location']}"


class IntentClassification(SuperbTask):
    name = "ic"
    recipe = "SuperbIC"
    metric = "accuracy"
    higher_is_better = True
    layout = IC_LAYOUT
    default_steps = 300
    default_batch_size = 32
    default_lr = 1e-3

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        root = require(Path(data), "Fluent Speech Commands root", IC_LAYOUT)
        splits = {}
        for split in ("train", "valid", "test"):
            csv_path = require(root / "data" / f"{split}_data.csv", f"Fluent Speech Commands {split} list", IC_LAYOUT)
            rows = read_rows(csv_path)
            if not rows:
                raise ValueError(f"{csv_path} lists no utterance\nexpected layout:\n{IC_LAYOUT}")
            missing = [r["path"] for r in rows if not (root / r["path"]).is_file()]
            if missing:
                raise ValueError(f"{len(missing)} file(s) listed in {csv_path} are missing (first: {root / missing[0]})"
                                 f"\nexpected layout:\n{IC_LAYOUT}")
            splits[split] = rows
        train_intents = {intent(r) for r in splits["train"]}
        for split in ("valid", "test"):
            unseen = sorted({intent(r) for r in splits[split]} - train_intents)
            if unseen:
                raise ValueError(f"{split} intents never seen in train: {unseen[:3]} (Fluent Speech Commands' "
                                 "splits share their intents; a model cannot learn an unseen one)")
        return {"root": root, "test_csv": root / "data" / "test_data.csv"}

    def configure(self, conf: dict, roots: dict[str, Path], overrides: RecipeOverrides) -> None:
        conf["prepare_data"] = {"dataset_root": str(roots["root"])}
        conf["build_batch_sampler"]["train"]["batch_size"] = overrides.batch_size

    def read_result(self, target_dir: Path, roots: dict[str, Path], overrides: RecipeOverrides) -> MetricRecord:
        test = read_yaml(target_dir / "evaluate" / "valid_best" / "test" / "result.yaml")
        rows = read_rows(roots["test_csv"])
        counts = Counter(intent(r) for r in rows)
        return MetricRecord(task=self.name, metric=self.metric, value=float(test["accuracy"]), higher_is_better=True,
                            test_n=len(rows), chance=majority_rate(counts.values()),
                            extra={"intents": len(counts), "test_loss": test.get("loss")})
