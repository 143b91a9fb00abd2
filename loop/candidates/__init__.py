"""Every finished training becomes a candidate: `window.py` opens an evolution window and trains
its candidates, `intake.py` takes a daemon run into the same pipeline, `scheduler.py` says when a
window opens and what each branch gets, `cards.py` writes EVAL.md and MODEL_CARD.md."""
