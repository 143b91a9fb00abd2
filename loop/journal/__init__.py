"""What the loop writes down: `events.py` (events.jsonl, append-only), `notes.py` (workpad, shared
TODO, mentor notes, storyline), `history.py` (the runs index the policies and reports read),
`machine.py` (the machine a night ran on, stored with its daemon_start event)."""
