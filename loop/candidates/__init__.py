"""Every finished training becomes a candidate, and every candidate takes one path, `path.py`'s
`take_candidates`: probe -> gates -> archive (with its training log, pass or fail) -> lineage ->
lifecycle -> proposal. `window.py` opens an evolution window and trains its candidates,
`intake.py` hands a daemon run to the same path, `records.py` types what both hand back to the
cycle (Handoff, WindowEntry), `scheduler.py` says when a window opens and what each branch gets,
`cards.py` writes an entry's evo_manifest.json, metrics.json, EVAL.md and MODEL_CARD.md."""
