"""The SUPERB task protocol: what one downstream task tells the generic s3prl runner.

A task is one file in ``tasks/`` (a :class:`SuperbTask` subclass) plus one line in
:mod:`tasks.superb.registry`. It supplies its s3prl recipe (``s3prl.problem.Superb*``), how a dataset
root in the official layout maps onto the recipe's settings, the layout check (run before any
model is loaded), and how the recipe's result becomes a :class:`MetricRecord`: the primary
metric's name and value, whether higher is better, the chance level where one exists, the
test-set size and a 95 % interval. The pipeline and the suite read these records only.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from distill.core.stats import wilson


@dataclass
class MetricRecord:
    """One task's test result for one model.

    ``value`` is the primary metric as a fraction (accuracy 0.86, PER 0.31); ``test_n`` the
    test utterances scored; ``units`` the tokens an error rate is counted over (phonemes,
    words), else ``None``; ``ci95`` the Wilson interval over ``units`` or ``test_n``.
    """

    task: str
    metric: str
    value: float
    higher_is_better: bool
    test_n: int
    chance: float | None = None
    units: int | None = None
    ci95: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.ci95 is None:
            n = self.units or self.test_n
            if n > 0 and 0.0 <= self.value <= 1.0:
                # Wilson over the units counted; for error rates the units are not independent,
                # so the interval understates the uncertainty (docs/superb.md).
                self.ci95 = list(wilson(round(self.value * n), n))
            # an error rate above 1 (insertions) has no proportion interval: ci95 stays None

    def as_dict(self) -> dict:
        return asdict(self)


def retention_pct(student: MetricRecord | dict, teacher: MetricRecord | dict) -> float | None:
    """How much of the teacher a student keeps, in %: accuracy ratio, or error-rate ratio
    teacher / student for lower-is-better metrics (SUPERB's convention for PER and WER)."""
    s = student.as_dict() if isinstance(student, MetricRecord) else student
    t = teacher.as_dict() if isinstance(teacher, MetricRecord) else teacher
    if s is None or t is None or s.get("value") is None or t.get("value") is None:
        return None
    if s["higher_is_better"]:
        chance = t.get("chance")
        if chance is not None and t["value"] <= chance:
            return None  # a reference at chance has nothing to retain
        return 100.0 * s["value"] / t["value"] if t["value"] > 0 else None
    if t["value"] >= 1.0:
        return None  # a reference that gets every token wrong (or worse) has nothing to retain
    if s["value"] == 0:
        return 100.0 if t["value"] == 0 else None  # no errors at all: the ratio is undefined, not infinite
    return 100.0 * t["value"] / s["value"]


def majority_rate(counts) -> float | None:
    """Chance level of a classification test set: the accuracy of always answering its most
    frequent label (``counts``: test utterances per label)."""
    counts = list(counts)
    return max(counts) / sum(counts) if counts and sum(counts) else None


@dataclass
class RecipeOverrides:
    """What ``stackdistill evaluate`` may change in a recipe besides steps and learning rate."""

    batch_size: int
    rnn_hidden: int = 0  # ASR's BLSTM width (0: the recipe's 1024)
    fold: int = 0  # ER: the test session is fold + 1


class SuperbTask:
    """One SUPERB downstream task run through its s3prl recipe.

    Subclasses set the class attributes and implement :meth:`resolve`, :meth:`configure` and
    :meth:`read_result`.
    """

    name: ClassVar[str] = ""
    recipe: ClassVar[str] = ""  # class name in s3prl.problem
    metric: ClassVar[str] = ""  # "accuracy", "per", "wer"
    higher_is_better: ClassVar[bool] = True
    layout: ClassVar[str] = ""  # the expected dataset layout, shown in every layout error
    default_steps: ClassVar[int] = 300
    default_batch_size: ClassVar[int] = 32
    default_lr: ClassVar[float] = 1e-3

    def resolve(self, data: str, test_data: str = "") -> dict[str, Path]:
        """Check the layout under ``data`` (and ``test_data``); returns the roots the recipe needs.
        Raises ``ValueError`` naming what is missing and the layout expected."""
        raise NotImplementedError

    def configure(self, conf: dict, roots: dict[str, Path], overrides: RecipeOverrides) -> None:
        """Point the recipe's ``default_config()`` (``conf``, edited in place) at ``roots``."""
        raise NotImplementedError

    def read_result(self, target_dir: Path, roots: dict[str, Path], overrides: RecipeOverrides) -> MetricRecord:
        """The recipe's test result under ``target_dir`` as a record."""
        raise NotImplementedError

    @contextlib.contextmanager
    def running(self, roots: dict[str, Path]):
        """Context the recipe runs in (a task that must redirect a download overrides it)."""
        yield


def read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise RuntimeError(f"s3prl finished without {path}")
    return yaml.safe_load(path.read_text()) or {}
