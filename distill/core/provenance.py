"""What a run's figures depend on besides its code and config: package versions, threads, CPU.

Two runs of the same command with the same seed give bit-identical figures on one machine
(``tests/test_reproducibility.py``); across machines or environments the float arithmetic can
differ (another thread count, another CPU instruction set, another version of a package within
the pinned ranges), and a trajectory sensitive to it (a small student trained from random
initialisation) can then end elsewhere. :func:`environment` records those factors in a run's
report, so two reports that disagree say whether their environments did.
"""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "torchaudio", "transformers", "accelerate", "numpy", "s3prl", "safetensors", "scikit-learn")


def environment() -> dict:
    """Python, package versions, torch's intra-op threads and CPU capability, the machine."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions, "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "processor": platform.processor() or None, "system": platform.system()}
