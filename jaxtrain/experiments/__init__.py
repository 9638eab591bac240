"""Experiments built from whole runs: sweeps (Optuna), vmapped populations, ensembles, transfer learning.

Submodules are imported where they are used: `transfer` and `snapshots` are used by the loop, while `sweep`,
`population` and `ensemble` drive the loop, so importing them here would be circular.
"""
