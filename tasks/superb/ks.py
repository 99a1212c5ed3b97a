"""SUPERB keyword spotting (Speech Commands v0.01) through s3prl's ``SuperbKS`` recipe.

The model under test is frozen; s3prl trains its learnable weighted sum of hidden states and a
mean-pooling linear head on the train root, keeps the best checkpoint by validation accuracy
(the split is a SHA-1 hash of the speaker), and scores it on the separate test root.
"""

from __future__ import annotations

from pathlib import Path

from tasks.corpora.layouts import KS_LAYOUT, resolve_ks_roots
from tasks.superb.protocol import MetricRecord, RecipeOverrides, SuperbTask, majority_rate, read_yaml


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
