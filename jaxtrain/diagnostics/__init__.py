"""Diagnostics: the training doctor, the LR range test, learning-curve diagnosis, per-layer statistics.

Deliberately imports nothing: `stats`, `curves` and `training` are pure building blocks of the train step
and its callbacks, while `doctor`, `lr_find` and `nan` build on the run (import them from their modules, or
from `jaxtrain`).
"""
