"""Running what the gate let through, in the order a run meets it: `plan.py` makes its RunPlan (the
trainer config with its overlay and budget caps, the command, the limits, the environment);
`supervise.py` is the run and its watch (`ActiveRun`, the `Executor` contract, `launch`, the watch
loop with its walltime and stall checks); `executor.py` picks the executor (`local_executor.py` on
this machine's device slots, `slots.py`; `ray_executor.py` on a cluster through `ray_link.py` and
`ray_driver.py`); `judge.py` says what became of it (`outcome_of` -> `RunOutcome`, with
`failure.py`'s signature); `repair/` is the one auto-repair pass after a failure. Around every run:
`sandbox.py` is the bubblewrap boundary (`sandbox_setup.py` builds it from the config, `cgroup.py`
caps its memory and tasks), `runwrap.py` writes its exit code and holds its walltime, `kill.py` is the one way
a process tree is ended and the one same-process check, `reaper.py` finds and kills a workspace's
strays after a restart."""
