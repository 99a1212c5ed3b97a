"""Audio in: reading and resampling (:mod:`.audio`), corpora and length-bucketed batches
(:mod:`.corpus`), the batches a training step reads (:mod:`.batches`) and the teacher-target cache
(:mod:`.cache`)."""
