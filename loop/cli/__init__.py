"""The `llmloop` command line: `main.py` is the one entry point; one small module per command group
(`daemon.py`: start, stop, status, finishup, report, reset, policy, sandbox, login; `pipeline.py`:
evolve, promote, rollback, archive; `llm.py`: llm probe). Each command is a thin call into the
folder that owns the job."""
