"""One cycle of the research loop, top to bottom: decide -> gate -> run -> judge -> record.

`cycle.py` is the loop itself (read it first: the record step is there); `decide.py` asks the
Builder (LLM, or the offline policy) and the Mentor, and gates the decision (`gate_decision`: the
quality gate, the overlay, no repeat, the command policy; a run leaves it with its plan); `watch.py` follows a run,
judges it, repairs and retries it once, and hands a finished training to the candidate path;
`record.py` is the cycle's typed record (the `cycle` event); `loop.py` is what every cycle needs;
`state.py` is what the daemon remembers between cycles (state.json, heartbeat); `finishup.py` is
the deadline that turns the loop into its last round and the final reports; `dataprofile.py` builds
the data report when the task's data is new; `failures.py` counts failures in a row and blocks."""
