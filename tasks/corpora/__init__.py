"""Corpora: synthetic ones in official layouts (espeak-ng) and the readers of labelled corpora."""
