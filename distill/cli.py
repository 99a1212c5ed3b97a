"""The ``stackdistill`` entry point (``python -m distill.cli``, also under ``accelerate launch``).

The commands live in :mod:`distill.jobs.cli`; this module only keeps the entry point's name.
"""

from __future__ import annotations

import sys

from distill.jobs.cli import _commands, build_parser, main

__all__ = ["main", "build_parser", "_commands"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
