"""Deployment: Hugging Face folders with model cards (:mod:`.export`), ONNX (:mod:`.onnx_export`) and
speed / size measurement (:mod:`.bench`)."""
