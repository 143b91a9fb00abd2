"""One cycle of the research loop, top to bottom: decide -> gate -> run -> judge -> record.

`cycle.py` is the loop itself (read it first); `state.py` is what the daemon remembers between
cycles (state.json, heartbeat); `finishup.py` is the deadline that turns the loop into its last
round and the final reports."""
