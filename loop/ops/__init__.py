"""What a box running for days needs: service units, notifications, retention (the disk)."""
