"""The `llmloop` command line: `main.py` is the one entry point; one small module per command group
(`daemon.py`: start, stop, status, finishup, report, reset, policy, sandbox, login; `pipeline.py`:
evolve, promote, rollback, archive; `llm.py`: llm probe; `policy.py`: policy check; `deploy.py`:
predict, export; `dashboard.py`; `service.py`: service install, status, uninstall; `tee.py`: the
foreground daemon's log copy). Each command is a thin call into the
folder that owns the job."""
