"""SUPERB keyword spotting (Speech Commands v0.01) through s3prl's ``SuperbKS`` recipe.

The model under test is frozen; s3prl trains its learnable weighted sum of hidden states and a
mean-pooling linear head on the train root, keeps the best checkpoint by validation accuracy
(the split is a SHA-1 hash of the speaker), and scores it on the separate test root.
"""

from __future__ import annotations

from pathlib import Path

from .superb import MetricRecord, RecipeOverrides, SuperbTask, majority_rate, read_yaml, require

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


class KeywordSpotting(SuperbTask):
    name = "ks"
    recipe = "SuperbKS"
    metric = "accuracy"
    higher_is_better = True
    layout = KS_LAYOUT

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        train, test = resolve_ks_roots(data, test_data)
        return {"train": train, "test": test}

    def configure(self, conf: dict, roots: dict[str, Path], overrides: RecipeOverrides) -> None:
        conf["prepare_data"] = {"gsc1": str(roots["train"]), "gsc1_test": str(roots["test"])}
        for split in ("train", "valid", "test"):
            conf["build_batch_sampler"][split]["batch_size"] = overrides.batch_size

    def read_result(self, target_dir: Path, roots: dict[str, Path], overrides: RecipeOverrides) -> MetricRecord:
        test = read_yaml(target_dir / "evaluate" / "valid_best" / "test" / "result.yaml")
        counts = [sum(1 for _ in d.glob("*.wav")) for d in roots["test"].iterdir() if d.is_dir()]
        n_test = sum(counts)  # s3prl scores every test clip once
        return MetricRecord(task=self.name, metric=self.metric, value=float(test["accuracy"]),
                            higher_is_better=True, test_n=n_test, chance=majority_rate(counts),
                            extra={"test_loss": test.get("loss")})
