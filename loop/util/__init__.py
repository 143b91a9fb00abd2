"""Shared helpers with no knowledge of the loop: atomic writes (`fsutil.py`), progress output,
secret redaction, fault points for tests, `netwatch.py` (a log line per network attempt), and
`workspace.py` (where every file of a workspace lives: the one source of the layout)."""
