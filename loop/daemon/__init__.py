"""The process around the cycles: `process.py` (lock, signals, stop requests, background start,
PHASE pause), `timer.py` (the adaptive pause between cycles), `recovery.py` (what a start repairs
after a kill -9), `status.py` (status and watch), `reset.py` (a fresh start)."""
