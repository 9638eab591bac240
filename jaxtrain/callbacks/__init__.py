"""The engine's concerns, one per module: writers, best-k checkpoints, early stopping, the plateau
schedule, snapshots, preemption, the non-finite guard and in-graph layer statistics."""
