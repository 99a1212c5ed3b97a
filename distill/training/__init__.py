"""Training: the one Accelerate loop (:mod:`.loop`), checkpoints, losses, distillation
(:mod:`.distillation`) and fine-tuning with a classification head (:mod:`.finetune`)."""
