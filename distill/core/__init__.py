"""The bottom layer: the model protocol (:mod:`.protocol`), the building blocks every model is made
of (frontends, transformer stacks) and the shared utilities (configs, atomic files, statistics,
plots). Imports nothing of stackdistill above it."""
