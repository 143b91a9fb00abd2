"""The process around the cycles: `process.py` (lock, signals, stop requests, background start),
the PHASE pause (`phase_pause.py`; `phase_external.py` when a systemd timer owns PHASE), `timer.py`
(the adaptive pause between cycles), `recovery.py` (what a start repairs after a kill -9),
`status.py` (status and watch), `reset.py` (a fresh start)."""
