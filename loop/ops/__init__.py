"""What a box that runs for days needs from the operating system: systemd units (units.py) and
`llmloop service install | status | uninstall` (service.py)."""
