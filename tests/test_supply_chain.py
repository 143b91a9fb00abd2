"""Auto-repair is supply-chain safe: no typosquat or made-up name is ever pip-installed, every map entry
is pinned, pip gets one index and wheels only, clones come only from an allowlist at a commit sha.

pip is replaced by a real subprocess: a tiny fake `python` that records its argv (and the
requirements file it is given) and exits 0. Nothing is mocked inside the process.
"""
from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from loop.config import DaemonConfig, validate
from loop.errors import ConfigError
from loop.run.repair import auto_repair
from loop.run.repair.clone import REPOS_DIR
from loop.run.repair.diagnose import diagnose
from tests.conftest import REPO

MAP = {"cv2": "opencv-python-headless==4.10.0.84", "yaml": "pyyaml==6.0.2", "sklearn": "scikit-learn==1.5.2",
       "PIL": "pillow==10.4.0", "timm": "timm==1.0.31"}
MADE_UP = ["torch-utils-pro", "sklearn-extra-tools", "reqeusts", "python-cv2", "opencv", "cv", "pyyaml2",
           "yaml-py", "scikitlearn", "sklearn2", "pil", "Pillow", "pillow", "timm-models", "torchvision-utils",
           "huggingface-hub-pro", "numpyy", "tensorflow-gpu-nightly", "crypt0", "requests-toolbelt-x"]
ALPHABET = string.ascii_lowercase + string.digits + "-"
CORPUS_CAP = 300
INDEX = "https://pypi.example.org/simple"
SHA = "0123456789abcdef" * 4

FAKE_PYTHON = """#!/bin/sh
rec="{record}"
echo "--- call" >> "$rec"
echo "ENV PIP_CONFIG_FILE=$PIP_CONFIG_FILE PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL" >> "$rec"
prev=""
for a in "$@"; do
  printf '%s\\n' "$a" >> "$rec"
  if [ "$prev" = "-r" ]; then cat "$a" >> "$rec.req"; fi
  prev="$a"
done
exit 0
"""


def edit_distance_1(name: str) -> set[str]:
    """Every deletion, adjacent transposition, substitution and insertion over [a-z0-9-]."""
    out: set[str] = set()
    for i in range(len(name)):
        out.add(name[:i] + name[i + 1:])
        if i + 1 < len(name):
            out.add(name[:i] + name[i + 1] + name[i] + name[i + 2:])
        for c in ALPHABET:
            out.add(name[:i] + c + name[i + 1:])
    for i in range(len(name) + 1):
        for c in ALPHABET:
            out.add(name[:i] + c + name[i:])
    out.discard(name)
    return {v for v in out if v and not v.startswith("-")}


def typosquat_corpus() -> list[str]:
    packages = [pin.split("==")[0] for pin in MAP.values()]
    variants: set[str] = set()
    for name in packages + [m.lower() for m in MAP]:
        variants |= edit_distance_1(name)
    variants -= set(MAP)                          # a mapped import name is not a typo
    sampled = random.Random(0).sample(sorted(variants), min(CORPUS_CAP, len(variants)))
    return sorted(set(sampled) | set(MADE_UP) - set(MAP))


@pytest.fixture
def fake_python(tmp_path) -> tuple[Path, Path]:
    record = tmp_path / "pip_calls.txt"
    exe = tmp_path / "bin" / "python"
    exe.parent.mkdir()
    exe.write_text(FAKE_PYTHON.format(record=record))
    exe.chmod(0o755)
    return exe, record


def calls(record: Path) -> list[list[str]]:
    """Each recorded invocation's argv (after its ENV line)."""
    if not record.exists():
        return []
    chunks = record.read_text().split("--- call\n")[1:]
    return [chunk.splitlines()[1:] for chunk in chunks]


def has_seq(argv: list[str], *seq: str) -> bool:
    return any(argv[i:i + len(seq)] == list(seq) for i in range(len(argv)))


# -------------------------------------------------------------- typosquats ----

def test_corpus_is_big_and_deterministic():
    corpus = typosquat_corpus()
    assert len(corpus) >= CORPUS_CAP and corpus == typosquat_corpus()
    assert "opencv-pyhton-headless" in edit_distance_1("opencv-python-headless")   # transposition
    assert {"pyyam", "pyymal", "pyyaml0", "pzyaml"} <= edit_distance_1("pyyaml")


def test_no_typosquat_or_made_up_name_is_installed(tmp_path, fake_python):
    exe, record = fake_python
    cfg = DaemonConfig(auto_repair_allow_direct_module_install=True, auto_repair_python_exe=str(exe),
                       auto_repair_index_url=INDEX, auto_repair_module_package_map=MAP,
                       auto_repair_model_package_map={"vit_tiny": "timm==1.0.31"})
    for name in typosquat_corpus():
        log = f"Traceback (most recent call last):\nModuleNotFoundError: No module named '{name}'\n"
        failure = diagnose(log)
        assert failure is not None and failure.kind == "module" and failure.name == name
        outcome = auto_repair(["python", "train.py"], log, cfg, tmp_path / "ws", REPO)
        assert outcome is None or not outcome.applied, name
        assert outcome.actions == [] and not outcome.retry, name
        assert "refused for supply-chain safety" in outcome.reason, name
        model_log = f"error: Unsupported model.name: {name}\n"
        outcome = auto_repair(["python", "train.py"], model_log, cfg, tmp_path / "ws", REPO)
        assert outcome is None or (not outcome.applied and outcome.actions == []), name
    assert not record.exists() or record.read_text() == ""      # no pip subprocess ever ran
    assert not (tmp_path / "ws").exists()


# ------------------------------------------------------------ pinned installs ----

def test_pinned_mapped_module_installs_exact_pin_from_one_index(tmp_path, fake_python, monkeypatch):
    exe, record = fake_python
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://evil.example.org/simple")
    cfg = DaemonConfig(auto_repair_python_exe=str(exe), auto_repair_index_url=INDEX,
                       auto_repair_module_package_map=MAP)
    outcome = auto_repair(["python", "x.py"], "ModuleNotFoundError: No module named 'cv2.dnn'", cfg,
                          tmp_path / "ws", REPO, pip_args=["--extra-index-url", "https://evil.example.org/s"])
    assert outcome is not None and outcome.applied, outcome
    assert outcome.actions[0]["package"] == "opencv-python-headless==4.10.0.84"
    [argv] = calls(record)
    assert argv[:3] == ["-m", "pip", "install"] and argv[-1] == "opencv-python-headless==4.10.0.84"
    assert has_seq(argv, "--only-binary", ":all:") and has_seq(argv, "--index-url", INDEX)
    assert argv.count("--index-url") == 1
    assert not any("extra-index-url" in a or "evil" in a for a in argv)
    assert "--require-hashes" not in argv
    env_line = record.read_text().split("--- call\n")[1].splitlines()[0]
    assert env_line == "ENV PIP_CONFIG_FILE=/dev/null PIP_EXTRA_INDEX_URL="


def test_sha256_pin_uses_require_hashes_requirements_file(tmp_path, fake_python):
    exe, record = fake_python
    pin = {"package": "pyyaml", "version": "6.0.2", "sha256": SHA}
    cfg = DaemonConfig(auto_repair_python_exe=str(exe), auto_repair_index_url=INDEX,
                       auto_repair_module_package_map={"yaml": pin})
    outcome = auto_repair("python x.py", "ModuleNotFoundError: No module named 'yaml'", cfg, tmp_path / "ws", REPO)
    assert outcome is not None and outcome.applied, outcome
    [argv] = calls(record)
    assert "--require-hashes" in argv and has_seq(argv, "--only-binary", ":all:")
    assert has_seq(argv, "--index-url", INDEX) and "pyyaml==6.0.2" not in argv
    requirements = Path(argv[argv.index("-r") + 1])
    assert not requirements.exists()                         # temporary: removed after pip ran
    assert Path(f"{record}.req").read_text() == f"pyyaml==6.0.2 --hash=sha256:{SHA}\n"


def test_alias_to_mapped_module_installs_its_pin(tmp_path, fake_python):
    exe, record = fake_python
    cfg = DaemonConfig(auto_repair_python_exe=str(exe), auto_repair_module_package_map=MAP,
                       auto_repair_module_alias_map={"scikit_learn": "sklearn"})
    outcome = auto_repair("python x.py", "ModuleNotFoundError: No module named 'scikit_learn'", cfg,
                          tmp_path / "ws", REPO)
    assert outcome is not None and outcome.applied
    [argv] = calls(record)
    assert argv[-1] == "scikit-learn==1.5.2" and has_seq(argv, "--index-url", "https://pypi.org/simple")


def test_local_directory_builds_and_wheel_stays_binary_only(tmp_path, fake_python):
    exe, record = fake_python
    project = tmp_path / "proj"
    project.mkdir()
    wheel = tmp_path / "dep-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    cfg = DaemonConfig(auto_repair_python_exe=str(exe),
                       auto_repair_module_package_map={"proj": str(project), "dep": str(wheel)})
    for module in ("proj", "dep"):
        outcome = auto_repair("python x.py", f"ModuleNotFoundError: No module named '{module}'", cfg,
                              tmp_path / "ws", REPO)
        assert outcome is not None and outcome.applied
    dir_call, wheel_call = calls(record)
    assert dir_call[-1] == str(project) and "--only-binary" not in dir_call
    assert wheel_call[-1] == str(wheel) and has_seq(wheel_call, "--only-binary", ":all:")


# ------------------------------------------------------------- config load ----

UNPINNED = ["requests", "requests>=2", ">=2", "requests==2.*", "requests~=2.31", "requests==", "requests===2.31",
            "requests==2.31;python_version>'3'", "relative/path", "/no/such/path", "requests @ https://x/y.whl",
            {"package": "requests", "version": ">=2"}, {"package": "requests", "version": "2.31", "sha256": "xyz"},
            {"package": "requests"}]


@pytest.mark.parametrize("key", ["auto_repair_module_package_map", "auto_repair_model_package_map",
                                 "auto_repair_module_alias_map"])
@pytest.mark.parametrize("value", UNPINNED, ids=str)
def test_unpinned_entry_is_config_error_naming_key(key, value):
    with pytest.raises(ConfigError) as err:
        validate(DaemonConfig, {key: {"requests": value}}, "<test>")
    message = str(err.value)
    assert message.startswith("<test>: ") and key in message


def test_pinned_forms_and_local_paths_load(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    cfg = validate(DaemonConfig, {
        "auto_repair_module_package_map": {**MAP, "d": str(tmp_path / "dir"),
                                           "w": str(tmp_path / "a-1.0-py3-none-any.whl"),
                                           "y": {"package": "pyyaml", "version": "6.0.2", "sha256": SHA.upper()},
                                           "r": "torch==2.4.0rc1", "p": "pkg==1!2.0.post1.dev3"},
        "auto_repair_module_alias_map": {"scikit_learn": "sklearn", "cv": "opencv-python==4.10.0.84"}}, "<test>")
    assert cfg.auto_repair_module_package_map["y"].sha256 == SHA
    with pytest.raises(ConfigError, match="auto_repair_module_package_map"):
        validate(DaemonConfig, {"auto_repair_module_package_map": {"n": str(tmp_path / "notes.txt")}}, "<test>")
    with pytest.raises(ConfigError, match="auto_repair_index_url"):
        validate(DaemonConfig, {"auto_repair_index_url": "pypi.org"}, "<test>")


def test_shipped_daemon_config_loads():
    from loop.config import load_daemon_config
    cfg = load_daemon_config(REPO / "config/daemon_config.yaml")
    assert cfg.auto_repair_index_url == "https://pypi.org/simple" and cfg.auto_repair_clone_allowlist == []


# ------------------------------------------------------------------ clones ----

ALLOWED = "https://github.com/trusted-org"


@pytest.mark.parametrize("repo, ref, why", [
    ("https://github.com/trusted-org/models.git", "main", "not a full 40-hex commit sha"),
    ("https://github.com/trusted-org/models.git", "v1.2.0", "not a full 40-hex commit sha"),
    ("https://github.com/trusted-org/models.git", SHA[:12], "not a full 40-hex commit sha"),
    ("https://github.com/trusted-org-evil/models.git", SHA[:40], "auto_repair_clone_allowlist"),
    ("https://github.com/evil/models.git", SHA[:40], "auto_repair_clone_allowlist"),
    ("https://github.com/trusted-org/../evil/models.git", SHA[:40], "'..'"),
    ("ext::sh -c touch% /tmp/pwned", SHA[:40], "transport helper"),
])
def test_clone_refused_with_reason(tmp_path, fake_python, repo, ref, why):
    exe, record = fake_python
    cfg = DaemonConfig(auto_repair_python_exe=str(exe), auto_repair_clone_allowlist=[ALLOWED],
                       auto_repair_module_clone_map={"models": {"repo": repo, "ref": ref}})
    outcome = auto_repair("python x.py", "ModuleNotFoundError: No module named 'models'", cfg, tmp_path / "ws", REPO)
    assert outcome is not None and not outcome.applied and not outcome.retry
    [action] = outcome.actions
    assert action["kind"] == "clone" and not action["ok"] and action["detail"].startswith("refused: ")
    assert why in action["detail"] and why in outcome.reason
    assert not (tmp_path / "ws" / REPOS_DIR).exists() and calls(record) == []


def test_empty_allowlist_refuses_every_clone(tmp_path, fake_python):
    exe, record = fake_python
    cfg = DaemonConfig(auto_repair_python_exe=str(exe),
                       auto_repair_model_clone_map={"fancy": {"repo": f"{ALLOWED}/m.git", "ref": SHA[:40]}})
    outcome = auto_repair("python x.py", "Unsupported model.name: fancy", cfg, tmp_path / "ws", REPO)
    assert outcome is not None and not outcome.applied
    assert "empty: no clones allowed" in outcome.reason and calls(record) == []
