"""A disk that never fills: the sweep after each cycle that prunes weights and checkpoints past
retention (sweep.py, prune.py), the free-space floor (disk.py), and the daemon's hook for both (upkeep.py)."""
