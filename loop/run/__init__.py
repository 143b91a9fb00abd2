"""Running what the gate let through: `plan.py` turns a decision into a run plan (the trainer
config with its overlay and budget caps, the command, the limits, the environment), `supervise.py`
starts a run in its own process group and follows it (monitor windows, walltime, stalls, exit
files), `judge.py` says what became of it (`RunOutcome`), `runwrap.py` writes a run's exit code,
`sandbox.py` is the bubblewrap boundary around every run (`sandbox_setup.py` builds it from the config),
`kill.py` is the one way a process tree is
ended and the one same-process check, `reaper.py` finds and kills a workspace's strays after a
restart, `repair.py` (with its `repair_*.py` parts) is the one auto-repair pass after a failure.
`executor.py` is where runs execute (local, or Ray: `ray_executor.py`, `ray_link.py`,
`ray_driver.py`), `slots.py` the device slots every training takes, `cgroup.py` a run's control
group, `failure.py` a failed run's signature."""
