"""MLflow: one store and experiment, written through `MlflowClient` (no fluent global state, so
nothing here touches an active run of someone else's code in the same process). A daemon start is
a parent run; each training run and candidate is a nested run (tag mlflow.parentRunId) with the
resolved config as params, its epochs as metric steps, the loop's verdicts as tags and the archive
entry's EVAL.md, model card and a curves plot as artifacts.

mlflow is an optional extra, imported on first use. Its HTTP client retries for minutes by
default; the daemon asks for none (unless the environment says otherwise) and backs off between
cycles itself (tracker.py)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from loop.config.sections import MlflowTracking
from loop.tracking.records import TrackedRun, public

# A down server costs a cycle seconds, not minutes: no retry within a sync (the next sync is the
# retry), a short timeout. The environment wins where it sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
GONE = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")   # a run deleted by hand in the UI
BATCH = 100                                                         # params or tags per log_batch
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def resolve_uri(uri: str, root: Path) -> str:
    """A relative sqlite file or local folder taken from the project root, like the config's other paths."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(root) / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return str((Path(root) / Path(uri).expanduser()).resolve())
    return uri


def default_artifacts(uri: str) -> str | None:
    """Beside a sqlite file (<its folder>/mlartifacts), not in whatever folder the daemon runs in;
    a server or a folder store chooses its own."""
    if uri.startswith("sqlite:////"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


class MlflowSink:
    """One MLflow store and experiment."""

    def __init__(self, cfg: MlflowTracking, root: Path):
        self.uri = resolve_uri(cfg.tracking_uri, root)
        self.experiment = cfg.experiment
        self.artifact_location = cfg.artifact_location or default_artifacts(self.uri)
        self.target = f"{public(self.uri)} (experiment {cfg.experiment})"    # for events and the ledger
        self.client = None
        self.experiment_id: str | None = None

    # ---- connection ----
    def connect(self) -> None:
        """The client and the experiment (created, or restored when it was deleted); raises when down."""
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            self.experiment_id = client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        else:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            self.experiment_id = experiment.experiment_id
        self.client = client

    # ---- runs ----
    def open_parent(self, name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """The parent run of one daemon start, left running until end_run."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._batch(run.info.run_id, params=params)
        return run.info.run_id

    def log_run(self, run: TrackedRun, parent_id: str, plot: Path | None, secrets: tuple[str, ...] = ()) -> str:
        """One nested run, complete (a failure part-way deletes it, so a retry logs it whole)."""
        from mlflow.entities import Metric
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        start = run.start_ms or int(time.time() * 1000)
        tags = {k: public(v, secrets) for k, v in run.tags.items()} | {MLFLOW_PARENT_RUN_ID: parent_id}
        created = self.client.create_run(self.experiment_id, start_time=start, tags=tags, run_name=run.name)
        run_id = created.info.run_id
        try:
            metrics, elapsed = [], 0.0
            for record in run.curve:                        # step = epoch; time = when the epoch ended
                elapsed += record.seconds
                at = start + int(elapsed * 1000)
                metrics += [Metric(key, float(getattr(record, key)), at, record.epoch) for key in EPOCH_METRICS]
                metrics.append(Metric("epoch_seconds", float(record.seconds), at, record.epoch))
            last = run.curve[-1].epoch if run.curve else 0
            end = run.end_ms or start
            metrics += [Metric(key, float(value), end, last) for key, value in run.summary.items()]
            self._batch(run_id, params={k: public(v, secrets) for k, v in run.params.items()}, metrics=metrics)
            for path in run.artifacts:
                self.client.log_artifact(run_id, str(path), artifact_path="archive")
            if plot is not None:
                self.client.log_artifact(run_id, str(plot), artifact_path="plots")
            self.client.set_terminated(run_id, "FINISHED" if run.ok else "FAILED", end_time=run.end_ms)
        except Exception:
            try:
                self.client.delete_run(run_id)
            except Exception:       # the store went down mid-run: the ledger never names it, a retry relogs
                pass
            raise
        return run_id

    def log_point(self, run_id: str, key: str, value: float, step: int) -> bool:
        return self._unless_gone(lambda: self.client.log_metric(run_id, key, float(value), step=step))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> bool:
        """False when the run is gone (deleted in the UI): nothing to update, not an outage."""
        return self._unless_gone(lambda: self._batch(run_id, tags=tags))

    def end_run(self, run_id: str, status: str = "FINISHED") -> bool:
        return self._unless_gone(lambda: self.client.set_terminated(run_id, status))

    # ---- helpers ----
    def _batch(self, run_id: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
               metrics: list | None = None) -> None:
        """log_batch within MLflow's limits (100 params or tags, 1000 metrics per call)."""
        from mlflow.entities import Param, RunTag

        params_ = [Param(k, v) for k, v in (params or {}).items()]
        tags_ = [RunTag(k, v) for k, v in (tags or {}).items()]
        metrics = metrics or []
        for i in range(0, max(len(params_), len(tags_), 1), BATCH):
            if params_[i:i + BATCH] or tags_[i:i + BATCH]:
                self.client.log_batch(run_id, params=params_[i:i + BATCH], tags=tags_[i:i + BATCH])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    @staticmethod
    def _unless_gone(call) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            call()
        except MlflowException as exc:
            if exc.error_code in GONE:
                return False
            raise
        return True
