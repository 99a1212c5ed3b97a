"""How redundant a stack is: layer similarity (:mod:`.similarity`), block structure
(:mod:`.blocks`), pruning orderings (:mod:`.prune`) and CoMFLP's search (:mod:`.comflp`)."""
