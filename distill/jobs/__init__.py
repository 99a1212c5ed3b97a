"""The top layer: the commands (:mod:`.cli`), the pipeline, the paper protocol, analysis, pruning and
layer-consistency runs, reports. The only layer that imports :mod:`tasks`."""
