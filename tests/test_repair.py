"""Auto-repair with real parts: pip installs into a throwaway venv, a git clone, a patched YAML
that the real trainer then runs. Nothing is mocked; installs are offline (local paths, --no-index)."""
from __future__ import annotations

import importlib.metadata
import os
import shlex
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import git
import pytest
import yaml

from loop.config import CloneSpec, DaemonConfig
from loop.run.repair import auto_repair
from loop.run.repair.clone import REPOS_DIR, checkout_clone, clone_dir
from loop.run.repair.diagnose import Failure, diagnose
from loop.run.repair.fallback import CONFIGS_DIR
from loop.run.repair.steps import plan_repair
from tests.conftest import REPO, tiny_config_dict

OFFLINE_PIP = ["--no-build-isolation", "--no-index"]

MODULE_TRACEBACK = """\
Traceback (most recent call last):
  File "/work/main/loop/trainer/__main__.py", line 3, in <module>
    from loop.trainer.command import main
  File "/work/main/loop/trainer/train.py", line 12, in <module>
    from foo.bar import Baz
ModuleNotFoundError: No module named 'foo.bar'
"""
TRAINER_STDERR = "error: Unsupported model.name: unet_resnet34\n"


# ------------------------------------------------------------------ helpers ----

def make_package(root: Path, module: str, body: str) -> Path:
    """A one-module setuptools project at `root`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{module.replace('_', '-')}"
        version = "0.1"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (root / f"{module}.py").write_text(body)
    return root


def run_python(python: Path | str, code: str) -> subprocess.CompletedProcess:
    # cwd=/ so nothing next to the test shadows what the venv has installed
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd="/", timeout=60)


def borrow_setuptools(venv_dir: Path, python: Path) -> None:
    """Make the venv build wheels offline with this interpreter's setuptools.

    The setuptools that `venv` bundles (65 on Python 3.11) needs the `wheel` package for
    bdist_wheel, which an offline venv lacks; setuptools >= 70.1 has it built in. The borrowed
    copy is exposed through a .pth file, so the venv's own site-packages (the install target)
    stays first on sys.path.
    """
    host = importlib.metadata.distribution("setuptools")
    if tuple(int(p) for p in host.version.split(".")[:2]) < (70, 1):
        pytest.skip(f"host setuptools {host.version} cannot build wheels without the wheel package")
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], capture_output=True)
    borrowed = venv_dir / "borrowed"
    borrowed.mkdir()
    site = Path(host.locate_file(""))
    for top in {f.parts[0] for f in host.files or [] if not f.parts[0].endswith(".pth") and f.parts[0] != ".."}:
        if (site / top).exists():
            (borrowed / top).symlink_to(site / top)
    purelib = run_python(python, "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    site_packages = Path(purelib)
    (site_packages / "_borrowed_setuptools.pth").write_text(f"{borrowed}\n")


@pytest.fixture(scope="module")
def throwaway_python(tmp_path_factory) -> Path:
    """A fresh venv (shared by this module's install tests) that can pip-install local projects offline."""
    venv_dir = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    python = venv_dir / "bin" / "python"
    borrow_setuptools(venv_dir, python)
    probe = run_python(python, "import setuptools.command.bdist_wheel")
    assert probe.returncode == 0, probe.stderr
    return python


def cfg_with(**keys) -> DaemonConfig:
    return DaemonConfig(**keys)


def trainer_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def write_trainer_yaml(path: Path, model: str) -> dict:
    data = tiny_config_dict(model={"name": model, "drop_rate": 0.1})
    data["run"]["label"] = "repair-test"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


# ----------------------------------------------------------------- diagnose ----

def test_diagnose_nested_module_gives_top_level_package():
    failure = diagnose("some progress output\n" + MODULE_TRACEBACK)
    assert failure == Failure(kind="module", name="foo", evidence="ModuleNotFoundError: No module named 'foo.bar'")


def test_diagnose_trainer_unsupported_model():
    failure = diagnose("loading config\n" + TRAINER_STDERR)
    assert failure is not None and failure.kind == "model" and failure.name == "unet_resnet34"
    assert failure.evidence == TRAINER_STDERR.strip()


def test_diagnose_last_occurrence_wins_and_clean_log_is_none():
    log = MODULE_TRACEBACK + "retrying...\n" + TRAINER_STDERR
    assert diagnose(log).kind == "model"
    assert diagnose(TRAINER_STDERR + MODULE_TRACEBACK).name == "foo"
    assert diagnose("epoch 1 loss 0.3\nTraceback: ValueError: bad\n") is None


# --------------------------------------------------------------------- plan ----

def test_plan_prefers_fallback_over_model_package_install():
    cfg = cfg_with(auto_repair_model_fallback_map={"unet_resnet34": "resnet10t"},
                   auto_repair_model_package_map={"unet_resnet34": "segmentation-models-pytorch==0.3.4"},
                   auto_repair_model_clone_map={"unet_resnet34": "https://example.org/smp.git"})
    steps = plan_repair(Failure(kind="model", name="unet_resnet34", evidence=""), cfg)
    assert [(s.kind, s.fallback) for s in steps] == [("fallback", "resnet10t")]


def test_plan_model_package_then_clone_with_bare_repo_string():
    failure = Failure(kind="model", name="fancy_net", evidence="")
    steps = plan_repair(failure, cfg_with(auto_repair_model_package_map={"fancy_net": "fancy-nets==1.0"}))
    assert [(s.kind, s.package, s.source) for s in steps] == [
        ("pip", "fancy-nets==1.0", "auto_repair_model_package_map")]
    pinned = {"package": "fancy-nets", "version": "1.0", "sha256": "ab" * 32}
    steps = plan_repair(failure, cfg_with(auto_repair_model_package_map={"fancy_net": pinned}))
    assert [(s.package, s.sha256) for s in steps] == [("fancy-nets==1.0", "ab" * 32)]
    steps = plan_repair(failure, cfg_with(auto_repair_model_clone_map={"fancy_net": "https://example.org/f.git"}))
    assert [(s.kind, s.clone) for s in steps] == [("clone", CloneSpec(repo="https://example.org/f.git"))]
    assert plan_repair(failure, cfg_with()) == []


def test_plan_module_package_map_beats_alias_map():
    failure = Failure(kind="module", name="cv2", evidence="")
    cfg = cfg_with(auto_repair_module_package_map={"cv2": "opencv-python-headless==4.10.0.84"},
                   auto_repair_module_alias_map={"cv2": "opencv-python==4.10.0.84"})
    steps = plan_repair(failure, cfg)
    assert [(s.kind, s.package) for s in steps] == [("pip", "opencv-python-headless==4.10.0.84")]


def test_plan_module_alias_map():
    steps = plan_repair(Failure(kind="module", name="cv2", evidence=""),
                        cfg_with(auto_repair_module_alias_map={"cv2": "opencv-python==4.10.0.84"}))
    assert [(s.kind, s.target, s.package, s.source) for s in steps] == [
        ("pip", "cv2", "opencv-python==4.10.0.84", "auto_repair_module_alias_map")]


def test_plan_module_alias_resolves_to_mapped_module_pin():
    cfg = cfg_with(auto_repair_module_package_map={"sklearn": {"package": "scikit-learn", "version": "1.5.2"}},
                   auto_repair_module_alias_map={"scikit_learn": "sklearn"})
    steps = plan_repair(Failure(kind="module", name="scikit_learn", evidence=""), cfg)
    assert [(s.kind, s.target, s.package, s.source) for s in steps] == [
        ("pip", "scikit_learn", "scikit-learn==1.5.2", "auto_repair_module_alias_map")]


def test_plan_module_clone_map():
    spec = {"repo": "https://example.org/x.git", "ref": "v2", "subdir": "py", "editable": False}
    steps = plan_repair(Failure(kind="module", name="xlib", evidence=""),
                        cfg_with(auto_repair_module_clone_map={"xlib": spec}))
    assert [(s.kind, s.clone) for s in steps] == [("clone", CloneSpec(**spec))]


@pytest.mark.parametrize("allow", [False, True])
def test_plan_never_guesses_a_direct_install(allow):
    failure = Failure(kind="module", name="einops", evidence="")
    assert plan_repair(failure, cfg_with(auto_repair_allow_direct_module_install=allow)) == []
    mapped = cfg_with(auto_repair_allow_direct_module_install=allow,
                      auto_repair_module_package_map={"einops": "einops==0.8.0"})
    assert [(s.package, s.source) for s in plan_repair(failure, mapped)] == [
        ("einops==0.8.0", "auto_repair_module_package_map")]


def test_direct_install_allowed_but_refused_with_reason(tmp_path):
    cfg = cfg_with(auto_repair_allow_direct_module_install=True)
    outcome = auto_repair("python train.py", MODULE_TRACEBACK, cfg, tmp_path / "ws", REPO)
    assert outcome is not None and not outcome.applied and outcome.actions == []
    assert "refused for supply-chain safety" in outcome.reason


# ---------------------------------------------------------- module repairs ----

def test_missing_module_really_installed(tmp_path, throwaway_python):
    package = make_package(tmp_path / "fake_dep", "llmloop_fake_dep", "VALUE = 42\n")
    script = "import llmloop_fake_dep; print(llmloop_fake_dep.VALUE)"
    before = run_python(throwaway_python, script)
    assert before.returncode != 0 and "ModuleNotFoundError" in before.stderr

    cfg = cfg_with(auto_repair_python_exe=str(throwaway_python),
                   auto_repair_module_package_map={"llmloop_fake_dep": str(package)})
    command = f"{throwaway_python} -c {shlex.quote(script)}"
    outcome = auto_repair(command, before.stderr, cfg, tmp_path / "ws", REPO, pip_args=OFFLINE_PIP)

    assert outcome is not None and outcome.applied and outcome.retry, outcome
    assert outcome.retry_command == command and outcome.reason is None
    [action] = outcome.actions
    assert action["kind"] == "pip" and action["target"] == "llmloop_fake_dep" and action["ok"]
    assert action["package"] == str(package) and "Successfully installed" in action["detail"]
    assert "--no-build-isolation --no-index" in action["detail"]   # pip_args reach pip, before the spec
    after = run_python(throwaway_python, script)
    assert after.returncode == 0 and after.stdout.strip() == "42", after.stderr


def test_failed_install_is_reported_not_applied(tmp_path, throwaway_python):
    # pinned, but not on any index pip may use (--no-index): pip fails
    cfg = cfg_with(auto_repair_python_exe=str(throwaway_python),
                   auto_repair_module_package_map={"llmloop_absent_dep": "llmloop-absent-dep==0.1"})
    outcome = auto_repair(["python", "x.py"], "ModuleNotFoundError: No module named 'llmloop_absent_dep'",
                          cfg, tmp_path / "ws", REPO, pip_args=OFFLINE_PIP)
    assert outcome is not None and not outcome.applied and not outcome.retry
    assert outcome.actions[0]["ok"] is False and "exit" in outcome.actions[0]["detail"]
    assert outcome.reason.startswith("pip step for 'llmloop_absent_dep' failed")


def make_git_package(path: Path, branch: str) -> str:
    """A repo whose default branch has no package; `branch` adds one under pkg/ (so the ref matters).

    Returns the commit sha of `branch`'s tip."""
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "test").set_value("user", "email", "test@example.org")
    (path / "README.md").write_text("models\n")
    repo.index.add(["README.md"])
    repo.index.commit("readme")
    repo.git.checkout("-b", branch)
    make_package(path / "pkg", "llmloop_fake_clone_dep", "VALUE = 'cloned'\n")
    repo.index.add(["pkg/pyproject.toml", "pkg/llmloop_fake_clone_dep.py"])
    sha = repo.index.commit("package").hexsha
    repo.git.checkout("main")
    return sha


def test_clone_repair_installs_editable_from_workspace(tmp_path, throwaway_python):
    origin = tmp_path / "origin"
    sha = make_git_package(origin, "release")
    spec = {"repo": f"file://{origin}", "ref": sha, "subdir": "pkg", "editable": True}
    cfg = cfg_with(auto_repair_python_exe=str(throwaway_python),
                   auto_repair_clone_allowlist=[f"file://{tmp_path}"],
                   auto_repair_module_clone_map={"llmloop_fake_clone_dep": spec})
    workspace = tmp_path / "ws"
    log = "ModuleNotFoundError: No module named 'llmloop_fake_clone_dep.layers'"
    outcome = auto_repair(["python", "train.py"], log, cfg, workspace, REPO, pip_args=OFFLINE_PIP)

    assert outcome is not None and outcome.applied, outcome
    [action] = outcome.actions
    clone = clone_dir(workspace, spec["repo"])
    assert clone.parent == workspace / REPOS_DIR and (clone / "pkg" / "llmloop_fake_clone_dep.py").is_file()
    assert action["kind"] == "clone" and action["repo"] == spec["repo"] and action["ok"]
    assert action["package"] == str((clone / "pkg").resolve())
    assert git.Repo(clone).head.commit.hexsha == sha
    result = run_python(throwaway_python, "import llmloop_fake_clone_dep as m; print(m.VALUE, m.__file__)")
    assert result.returncode == 0, result.stderr
    value, where = result.stdout.split()
    # editable: the module is imported from the clone itself, not a copy in site-packages
    assert value == "cloned" and Path(where).resolve().is_relative_to(clone.resolve())


def test_existing_clone_is_reused(tmp_path):
    origin = tmp_path / "origin"
    make_git_package(origin, "release")
    dest = clone_dir(tmp_path / "ws", str(origin))
    checkout_clone(str(origin), "release", dest)
    (dest / "local_marker.txt").write_text("kept")   # a fresh clone would not have it
    checkout_clone(str(origin), "main", dest)
    assert (dest / "local_marker.txt").read_text() == "kept"
    assert git.Repo(dest).active_branch.name == "main" and not (dest / "pkg").exists()


def test_unmapped_module_installs_nothing(tmp_path):
    cfg = cfg_with(auto_repair_module_package_map={"other": "other-pkg==1.0"})
    outcome = auto_repair("python train.py", MODULE_TRACEBACK, cfg, tmp_path / "ws", REPO)
    assert outcome is not None and not outcome.applied and not outcome.retry
    assert outcome.actions == [] and outcome.retry_command == "python train.py"
    assert "'foo'" in outcome.reason and "refused for supply-chain safety" in outcome.reason
    assert not (tmp_path / "ws").exists()


def test_disabled_or_undiagnosed_returns_none(tmp_path):
    cfg = cfg_with(auto_repair_enabled=False, auto_repair_module_package_map={"foo": "foo-pkg==1.0"})
    assert auto_repair("python train.py", MODULE_TRACEBACK, cfg, tmp_path, REPO) is None
    assert auto_repair("python train.py", "Killed\n", cfg_with(), tmp_path, REPO) is None


# --------------------------------------------------------- model fallback ----

FALLBACK = {"auto_repair_model_fallback_map": {"unet_resnet34": "resnet10t"}}


def assert_patched_copy(copy: Path, original: dict, workspace: Path) -> None:
    assert copy.parent == (workspace / CONFIGS_DIR).resolve() and copy.name == "cfg-resnet10t.yaml"
    patched = yaml.safe_load(copy.read_text())
    assert patched["model"]["name"] == "resnet10t"
    expected = dict(original, model=dict(original["model"], name="resnet10t"))
    assert patched == expected   # every other key, model.drop_rate included, unchanged


def test_fallback_patches_config_copy_for_string_command(tmp_path):
    config = tmp_path / "cfg.yaml"
    original = write_trainer_yaml(config, "unet_resnet34")
    original_text = config.read_text()
    workspace = tmp_path / "ws"
    command = f"python -m loop.trainer --config {config} --out {tmp_path / 'run'}"
    outcome = auto_repair(command, TRAINER_STDERR, cfg_with(**FALLBACK), workspace, REPO)

    assert outcome is not None and outcome.applied, outcome
    [action] = outcome.actions
    assert action["kind"] == "fallback" and action["fallback"] == "resnet10t" and action["ok"]
    copy = Path(action["config"])
    assert_patched_copy(copy, original, workspace)
    assert config.read_text() == original_text
    assert isinstance(outcome.retry_command, str)
    assert outcome.retry_command == f"python -m loop.trainer --config {copy} --out {tmp_path / 'run'}"


def test_fallback_string_command_quoted_and_equals_forms(tmp_path):
    folder = tmp_path / "my configs"
    folder.mkdir()
    config = folder / "cfg.yaml"
    write_trainer_yaml(config, "unet_resnet34")
    workspace = tmp_path / "w s"
    for form in (f'--config "{config}"', f"--config={shlex.quote(str(config))}"):
        command = f"cd /tmp && python -m loop.trainer {form} --set model.name=unet_resnet34 --out o"
        outcome = auto_repair(command, TRAINER_STDERR, cfg_with(**FALLBACK), workspace, REPO)
        assert outcome is not None and outcome.applied, outcome
        tokens = shlex.split(outcome.retry_command)
        assert outcome.retry_command.startswith("cd /tmp && python -m loop.trainer ")   # shell syntax kept
        config_values = [t.split("=", 1)[1] if t.startswith("--config=") else tokens[i + 1]
                         for i, t in enumerate(tokens) if t.startswith("--config")]
        assert config_values == [outcome.actions[0]["config"]]
        assert tokens[tokens.index("--set") + 1] == "model.name=resnet10t"


def test_fallback_set_only_command_is_rewritten(tmp_path):
    command = ["llmloop", "train", "--resume", "--out", "runs/a", "--set", "model.name=unet_resnet34",
               "--set", "optim.lr=0.1"]
    outcome = auto_repair(command, TRAINER_STDERR, cfg_with(**FALLBACK), tmp_path / "ws", REPO)
    assert outcome is not None and outcome.applied
    assert outcome.retry_command == ["llmloop", "train", "--resume", "--out", "runs/a", "--set",
                                     "model.name=resnet10t", "--set", "optim.lr=0.1"]
    assert "config" not in outcome.actions[0] and not (tmp_path / "ws" / CONFIGS_DIR).exists()


def test_fallback_without_config_or_model_set_fails_clearly(tmp_path):
    outcome = auto_repair(["llmloop", "train", "--resume", "--out", "runs/a"], TRAINER_STDERR,
                          cfg_with(**FALLBACK), tmp_path / "ws", REPO)
    assert outcome is not None and not outcome.applied
    assert "neither --config PATH nor --set model.name" in outcome.actions[0]["detail"]
    assert outcome.retry_command == ["llmloop", "train", "--resume", "--out", "runs/a"]


@pytest.mark.slow   # two trainer subprocesses, ~6 s each on 2 CPU cores (mostly torch/timm import)
def test_fallback_retry_trains_end_to_end(tmp_path):
    config = tmp_path / "cfg.yaml"
    original = write_trainer_yaml(config, "unet_resnet34")
    workspace = tmp_path / "ws"
    tiny = ["--set", "run.epochs=1", "--set", "data.image_size=16", "--set", "data.train_fraction=0.2"]
    command = [sys.executable, "-m", "loop.trainer", "--config", str(config), "--out", str(tmp_path / "run")]
    failed = subprocess.run(command + tiny, capture_output=True, text=True, cwd=REPO, env=trainer_env(),
                            timeout=300)
    assert failed.returncode == 3, failed.stderr

    outcome = auto_repair(command, failed.stderr, cfg_with(**FALLBACK), workspace, REPO)
    assert outcome is not None and outcome.applied and isinstance(outcome.retry_command, list)
    copy = Path(outcome.actions[0]["config"])
    assert_patched_copy(copy, original, workspace)
    assert outcome.retry_command == command[:4] + [str(copy)] + command[5:]

    retried = subprocess.run(outcome.retry_command + tiny, capture_output=True, text=True, cwd=REPO,
                             env=trainer_env(), timeout=300)
    assert retried.returncode == 0, retried.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
