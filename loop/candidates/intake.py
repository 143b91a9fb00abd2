"""The hand-off: a finished Builder `train` run enters the promotion pipeline as a candidate of the
next generation (branch `c<cycle>`) and takes the same path as a window's candidates (path.py):
probed, gated, frozen with its training log, and maybe the promotion proposal. The result
(`Handoff`) goes back into the cycle's event and the Builder's next prompt."""
from __future__ import annotations

import json
import time
from pathlib import Path

from loop.archive import freeze as archive
from loop.archive.lineage import read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.store import load_store
from loop.candidates.path import Training, take_candidates
from loop.candidates.records import Handoff
from loop.candidates.scheduler import CandidateSpec
from loop.config import DaemonConfig
from loop.domains import task_domain
from loop.errors import LoopError
from loop.journal.metrics import RunMetrics
from loop.util.fsutil import read_regular_text

SUPERVISOR_LOG = "run.log"      # the daemon's run folder: run.log beside the trainer's out/


def submit_run(cfg: DaemonConfig, workspace: Path, run_dir: Path, cycle: int, trace_id: str,
               returncode: int = 0, log: Path | None = None, metrics: RunMetrics | None = None) -> Handoff:
    """Archive one finished run as a candidate. `log` (default: the supervisor's run.log beside
    `run_dir`, else the run's own train.log) is archived as the entry's train.log; `metrics`: its
    metrics.json as the caller already read it (else read here)."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or not run_dir.is_dir():      # the run made its out/: it must be a folder of its own
        raise LoopError(f"{run_dir}: a run's output must be a folder, not a link; not archived")
    paths = ModelPaths(Path(workspace))
    paths.archive.mkdir(parents=True, exist_ok=True)
    head = paths.head_name()
    head_row = next((r for r in read_lineage(paths.lineage) if r.name == head), None)
    try:          # run-written: read without following a link, and only for the record's seed and strategy
        run_cfg = json.loads(read_regular_text(run_dir / "train_args.json", within=run_dir.parent))
    except (OSError, ValueError):
        run_cfg = {}
    spec = CandidateSpec(gen_id=(head_row.gen_id if head_row else 0) + 1, branch_id=f"c{cycle}",
                         seed=run_cfg.get("run", {}).get("seed", 0),
                         strategy=run_cfg.get("data", {}).get("sampling", {}).get("strategy", "uniform"),
                         parent=head or "", grandparent=head_row.parent if head_row else "", timestamp=time.time())
    name = archive.entry_name(cfg.evolution.archive_prefix, spec.gen_id, spec.branch_id, spec.timestamp)
    if log is None and (run_dir.parent / SUPERVISOR_LOG).exists():
        log = run_dir.parent / SUPERVISOR_LOG
    training = Training(name=name, spec=spec, run_dir=run_dir, run_cfg=run_cfg, returncode=returncode, log=log,
                        metrics=metrics)
    # probed on the daemon's own task, never on one the run's files name (they could name any module)
    taken = take_candidates(cfg, paths, load_store(paths, trace_id), [training], head, trace_id,
                            domain=task_domain(cfg), source="builder", say=lambda *_: None)
    outcome, proposal = taken.ranking[0], taken.proposal
    return Handoff(name=name, status=outcome.status, score=outcome.gates.score, gates=outcome.gates.gates,
                   failed_gates=outcome.gates.failed, archive_path=outcome.archive_path, head=head,
                   proposed=bool(proposal), improvement=proposal.improvement if proposal else None,
                   auto_promotion=taken.auto_promotion)
