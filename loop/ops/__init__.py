"""What a box that runs for days needs: service units (units.py, service.py)."""
