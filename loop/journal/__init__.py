"""What the loop writes down: `events.py` (events.jsonl, append-only), `notes.py` (workpad, shared
TODO, mentor notes, storyline), `history.py` (the runs index the policies and reports read)."""
