"""SUPERB tasks through s3prl: the task protocol (:mod:`.protocol`), one file per task, the registry,
single-task evaluation (:mod:`.evaluate`), the suite (:mod:`.suite`) and the s3prl glue."""
