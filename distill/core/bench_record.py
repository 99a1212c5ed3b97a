"""A benchmark's JSON, written after every part, so a failure part-way loses nothing measured.

Every benchmark (``stackdistill bench``, ``scripts/bench_*.py``) runs named parts through
:meth:`BenchRecord.part`: a part that raises is logged with its traceback, named in the JSON's
``failed`` list with its error, and the remaining parts still run; the JSON is rewritten
(atomically) after each part, so a killed benchmark leaves what it had. :meth:`BenchRecord.finish`
marks the record ``complete`` or raises :class:`BenchmarkIncomplete` naming the failed parts.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Callable, TypeVar

from distill.core.fsutil import write_json_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")


class BenchmarkIncomplete(RuntimeError):
    """Some parts of a benchmark failed; its JSON holds the others and names these."""


class BenchRecord:
    """``result`` (a dict the benchmark fills) saved to ``path`` with ``complete`` and ``failed``."""

    def __init__(self, path: str | Path, result: dict):
        self.path = Path(path)
        self.result = result
        self.result.update(complete=False, failed=[])
        self.save()

    @property
    def failed_parts(self) -> list[str]:
        return [f["part"] for f in self.result["failed"]]

    def save(self) -> None:
        write_json_atomic(self.path, self.result)

    def part(self, name: str, fn: Callable[[], T]) -> T | None:
        """``fn()``; on an exception the part is recorded as failed and ``None`` returned. Saves either way."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - a benchmark part's failure of any kind is recorded
            log.error("benchmark part %r failed:\n%s", name, traceback.format_exc())
            self.result["failed"].append({"part": name, "error": f"{type(err).__name__}: {err}"})
            return None
        finally:
            self.save()

    def finish(self) -> dict:
        """Mark complete and save; raises :class:`BenchmarkIncomplete` if any part failed."""
        self.result["complete"] = not self.result["failed"]
        self.save()
        if self.result["failed"]:
            raise BenchmarkIncomplete(f"{self.path}: {len(self.result['failed'])} part(s) failed "
                                      f"({'; '.join(self.failed_parts)}); the JSON holds every other part")
        return self.result

    def exit_status(self, script: str, done: str) -> int:
        """For a script's ``main``: :meth:`finish`, then print ``done`` (0) or the failed parts to stderr (1)."""
        import sys

        try:
            self.finish()
        except BenchmarkIncomplete as err:
            print(f"[{script}] {err}", file=sys.stderr)
            return 1
        print(f"[{script}] {done}")
        return 0
