"""Notifications: what the event log means for a person (mapping.py) and its delivery through apprise
off the cycles' path (notifier.py)."""
