"""What the loop writes down: `events.py` (events.jsonl, append-only), `notes.py` (workpad, shared
TODO, mentor notes, storyline), `history.py` (the runs index the policies and reports read),
`metrics.py` (a run's metrics.json: RunMetrics and its one reader, torch-free), `fingerprint.py`
(a run's recipe and what counts as a repeat), `machine.py` (the machine a night ran on, stored
with its daemon_start event). Whether a run is a new best is loop/verdict/."""
