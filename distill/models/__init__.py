"""Any model as a teacher: :func:`.teacher.load_teacher` reads hub ids, folders, CTranslate2 and s3prl
models, student folders and fine-tuned classifiers; classification heads and classifier folders."""
