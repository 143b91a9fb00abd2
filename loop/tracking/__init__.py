"""Experiment tracking, optional and best-effort: the night logged into the tools a team already
uses (`tracking:` in the daemon config).

    records.py            one run as a tracker sees it (TrackedRun); flattened params; no credentials
    sources.py            what to log, read from the workspace: the runs index and the archive
    mlflow_sink.py        MLflow: a parent run per daemon start, a nested run per training and candidate
    ledger.py             what is already logged in which store (so a tracker that was down catches up)
    plots.py              the per-epoch curves of a run, as a PNG artifact
    tensorboard_links.py  <workspace>/tensorboard: one link per run folder's event files
    tracker.py            the daemon's side: sync after every cycle, one event per outage, backoff

The workspace files are the truth; trackers get a copy. Nothing here may stop a cycle.
"""
