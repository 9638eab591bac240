"""Diagnostics: the training doctor, the LR range test, learning-curve diagnosis, per-layer statistics.

Deliberately imports nothing: `stats` and `curves` are pure and meant to be imported by the train step and
the loop, which `doctor` and `lr_find` themselves build on (import them from their modules, or from
`jaxtrain`).
"""
