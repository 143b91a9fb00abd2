from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# tests/_session.py is a plugin (below): asserts in it are rewritten only if pytest imports it first
pytest.register_assert_rewrite("tests._session")
from tests._session import built_once, shared_root  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The scripted LLM server's `llm_server` fixture, for every test module without an import; what a
# test run shares and cleans up (built once across xdist workers, slow marks checked, no leftovers).
pytest_plugins = ["tests.llm_server", "tests._session", "tests._order"]


@pytest.fixture(autouse=True)
def _domain_trust():
    """A daemon started in-process narrows which `module:Class` tasks this process imports
    (loop.domains.trust_domains); that trust is the daemon's, never the next test's."""
    import loop.domains as domains

    yield
    domains._trusted, domains._untrusted_roots = None, ()


@pytest.fixture(scope="session", autouse=True)
def pixel_cache(tmp_path_factory):
    """One decoded-pixel cache for the whole test run, shared by its xdist workers (never the user's
    ~/.cache): tests exercise the cache for real (it is locked and atomic), and image-folder tasks
    built by several tests decode once per content."""
    path = shared_root(tmp_path_factory) / "pixel-cache"
    path.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("LLMLOOP_PIXEL_CACHE")
    os.environ["LLMLOOP_PIXEL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LLMLOOP_PIXEL_CACHE", None)
    else:
        os.environ["LLMLOOP_PIXEL_CACHE"] = old


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """7,200 rendered shapes as PNG files in class folders (written class by class, as a copy would):
    a task of real size on disk, over 4,096 training images so loader workers start."""
    from loop.domains.shapes import write_shapes_files

    def build(folder: Path) -> None:
        folder.chmod(0o755)       # a data folder the sandbox user (nobody) may read, as a user's would be
        write_shapes_files(folder, count=7200, image_size=32)

    return built_once(tmp_path_factory, "shapes-folder", build)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m loop.cli.main ARGS` as a real subprocess."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "loop.cli.main", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def cli_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`llmloop ARGS` in this process (loop.cli.main.main), for a command whose process boundary is not
    what a test checks; the same shape as tests.conftest.run_cli's answer (what it printed, its code)."""
    from loop.cli.main import main

    capsys.readouterr()                     # only this command's output
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["llmloop", *args], code, out, err)


def exited(pid: int) -> bool:
    """Whether process `pid` has exited: gone, or a zombie (only its own parent can reap it)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def ray_drivers() -> set[int]:
    """This process's Ray driver children still running (`python -m loop.run.ray_driver`; a zombie has exited)."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "loop.run.ray_driver" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_for(predicate, timeout: float, what: str, poll: float = 0.02) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def add_archive_entry(paths, run_dir, name: str, gen: int, status: str = "PASS", parent: str = "",
                      promoted: bool = False, score: float = 0.5):
    """Freeze a real model folder into the archive with placeholder text files, and record it in
    lineage.csv, the cheap way tests build an archive."""
    from loop.archive import freeze as archive
    from loop.archive.lineage import LineageRow, upsert_lineage

    texts = {f: f"{f} of {name}\n" for f in archive.WRITTEN}
    texts["STATUS.txt"] = status + "\n"
    entry = archive.freeze(paths, name, run_dir, texts)
    upsert_lineage(paths.lineage, LineageRow(name=name, gen_id=gen, branch_id="a", parent=parent, seed=1,
                                             strategy="uniform", status=entry.status, score=score,
                                             archive_path=str(entry.path), hashes_sha256=entry.hashes_sha256,
                                             promoted=promoted,
                                             promoted_at=f"2026-01-0{gen}T00:00:00Z" if promoted else ""))
    return entry.path


def tiny_config_dict(**sections) -> dict:
    """A trainer config that trains in a second or two on CPU (resnet10t, 16 px, a slice of digits)."""
    cfg = {
        "data": {"domain": "digits", "image_size": 16, "batch_size": 32, "train_fraction": 0.3},
        "model": {"name": "resnet10t"},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "run": {"seed": 7, "epochs": 1, "threads": 1, "log_every_steps": 5},   # one per worker (tests/_session.py)
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


# ------------------------------------------------------------- one model zoo ----
# Every trained model tests share, by name: built once per test run (across xdist workers) the
# first time a test asks for it. name -> tiny_config_dict sections.
ZOO = {
    "tiny": {},                                                             # tiny_config_dict as it is
    "evo-weak": dict(data={"train_fraction": 0.5}, run={"epochs": 1}),      # evolution: rising quality
    "evo-mid": dict(data={"train_fraction": 0.5}, run={"epochs": 2}),
    "evo-strong": dict(data={"train_fraction": 0.5}, run={"epochs": 5}),
    "phase-weak": dict(data={"train_fraction": 0.1, "sampling": {"strategy": "recent_weighted"}},   # PHASE:
                       optim={"name": "sgd", "lr": 0.02}, run={"epochs": 1}),                     # far apart
    "phase-strong": dict(data={"train_fraction": 0.3}, loss={"label_smoothing": 0.05}, run={"epochs": 2}),
}


class Zoo:
    """`zoo["evo-weak"]`: the run folder of that model (read it, or copy it to change it)."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory

    def __getitem__(self, name: str) -> Path:
        from loop.config import validate
        from loop.trainer.config import TrainerConfig
        from loop.trainer.train import train

        def build(folder: Path) -> None:
            train(validate(TrainerConfig, tiny_config_dict(**ZOO[name]), name), folder / "run")

        return built_once(self.factory, f"zoo-{name}", build) / "run"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory)


@pytest.fixture
def tiny_cfg():
    from loop.config import validate
    from loop.trainer.config import TrainerConfig

    def make(**sections):
        return validate(TrainerConfig, tiny_config_dict(**sections), "<test>")

    return make


# ---------------------------------------------------------- a real daemon run ----
REAL_DAEMON_CYCLES = 4          # Mentor reviews at 2 and 4, the evolution window at 3; a 5th would be the
                                # offline policy's 14-epoch exploit run, the slowest of all


@pytest.fixture(scope="session")
def real_daemon_workspace(tmp_path_factory) -> Path:
    """The workspace of a real daemon run: REAL_DAEMON_CYCLES offline cycles (no LLM endpoint: the
    offline policy decides and reviews), the tiny trainer config on a 5% slice of digits, a Mentor
    review every 2nd cycle and one evolution window. Every cycle trains for real, so the events,
    the runs index, the metrics and the archive are what the daemon writes, field for field.
    Tests read it; one that changes it works on a copy. Built once per test run (every xdist worker
    reads the same one)."""
    return built_once(tmp_path_factory, "real_daemon", build_real_daemon_workspace) / "artifacts"


def build_real_daemon_workspace(root: Path) -> None:
    import yaml

    from loop.config import DaemonConfig, validate
    from loop.daemon.process import run_daemon, workspace_of

    trainer = root / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.05})))
    candidates = {"data": {"image_size": 16, "train_fraction": 0.05}, "run": {"epochs": 1}}
    cfg = validate(DaemonConfig, {
        "workspace": str(root / "artifacts"), "default_trainer_config": str(trainer), "sandbox": "optional",
        "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
        "phase": {"schedule": "off"}, "mentor_every_n_cycles": 2, "evo_period_cycles": 3,
        "max_concurrent_experiments": 1,
        "evolution": {"candidate_overrides": candidates, "rules": {"per_class_accuracy_floor": None}},
    }, "<real_daemon_workspace>")
    state = run_daemon(cfg, workspace_of(cfg), max_cycles=REAL_DAEMON_CYCLES, say=lambda *_: None)
    assert state.cycle == REAL_DAEMON_CYCLES, state


# ---------------------------------------------------------------- fault tiers ----
# Fault-injection tests run a CI tier by default; LLMLOOP_FAULT_TIER=long runs the longer tier.
# With LLMLOOP_RELIABILITY_OUT set (bench/reliability.py sets it), each campaign also writes its
# figures there as <name>.json, which the benchmark gathers into bench/RESULTS.md.

def fault_tier() -> str:
    return "long" if os.environ.get("LLMLOOP_FAULT_TIER", "").lower() == "long" else "ci"


def record_reliability(name: str, **figures) -> None:
    out = os.environ.get("LLMLOOP_RELIABILITY_OUT")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps({"tier": fault_tier(), **figures}, indent=2) + "\n")


@pytest.fixture
def receiver():
    """`receiver(up=True)`: a real notification receiver on 127.0.0.1 (tests/notify_receiver.py);
    every one made is closed after the test."""
    from tests.notify_receiver import Receiver

    made = []

    def make(up: bool = True) -> Receiver:
        made.append(Receiver(up=up))
        return made[-1]

    yield make
    for r in made:
        r.close()
