"""PHASE deep evaluation: `window.py` says when a PHASE window opens and starts it
(`python -m loop.phase run`); `run.py` runs one PHASE evaluation top to bottom: `subjects.py`
picks GEN_HEAD and the archive's top-k, `evaluate.py` evaluates each with QTIME replicas,
`stats.py` gives the Student-t intervals, `collapse.py` turns each domain's results into fitness,
insights, promoted/flagged variants and search-space recommendations, and `results.py` holds the
typed records of phase_results.json and its completion signal and reads and writes them.
`command.py` is the command line (`python -m loop.phase`, `llmloop phase`); `marker.py` is the
record a PHASE run writes of itself at its start (who runs PHASE now, for a daemon that did not start it)."""
