"""Experiments built from whole runs: sweeps (Optuna), vmapped populations, ensembles, transfer learning.

Submodules are imported where they are used: `transfer` is a building block of the run itself, `population`
and `ensemble` are dispatched by `jaxtrain.fit`/`evaluate`, and `sweep` calls `jaxtrain.fit`.
"""
