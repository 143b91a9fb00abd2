"""Shared helpers with no knowledge of the loop: atomic writes (`fsutil.py`), progress output,
secret redaction, fault points for tests, and `workspace.py` (where every file of a workspace lives)."""
