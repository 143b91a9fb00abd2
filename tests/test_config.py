"""Config layer: every way a config can be wrong gives one error naming the file and the key."""
from __future__ import annotations

import pytest
import yaml

from loop.config import DaemonConfig, apply_overrides, deep_merge, load_daemon_config, load_model_file
from loop.errors import ConfigError
from loop.trainer.config import TrainerConfig, load_trainer_config
from tests.conftest import REPO, run_cli


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_configs_load():
    assert load_daemon_config(REPO / "config/daemon_config.yaml").mentor_every_n_cycles == 4
    for path in (REPO / "config/trainer").glob("*.yaml"):
        assert isinstance(load_trainer_config(path), TrainerConfig)


def test_wrong_type_names_file_and_key(tmp_path):
    path = write(tmp_path, "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError) as err:
        load_trainer_config(path)
    assert str(path) in str(err.value) and "optim.lr" in str(err.value)


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "model:\n  nmae: resnet10t\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: model\.nmae: unknown key"):
        load_trainer_config(path)


def test_unknown_daemon_key(tmp_path):
    path = write(tmp_path, "daemon_pol_seconds: 3\n", "daemon.yaml")
    with pytest.raises(ConfigError, match=r"daemon\.yaml: daemon_pol_seconds: unknown key"):
        load_daemon_config(path)


def test_removed_daemon_key_loads_with_a_deprecation_warning(tmp_path, caplog):
    """auto_repair_allow_direct_module_install did nothing and is gone: an old config that still
    sets it loads (a logged warning naming the key, saying it is ignored), rather than failing."""
    key = "auto_repair_allow_direct_module_install"
    assert key not in DaemonConfig.model_fields
    assert key not in yaml.safe_load((REPO / "config/daemon_config.yaml").read_text())
    path = write(tmp_path, f"{key}: true\nmentor_every_n_cycles: 7\n", "daemon.yaml")
    with caplog.at_level("WARNING", logger="loop.config"):
        cfg = load_daemon_config(path)
    assert cfg.mentor_every_n_cycles == 7 and not hasattr(cfg, key)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and key in r.getMessage()]
    assert len(warned) == 1 and "deprecated and ignored" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="loop.config"):
        load_daemon_config(REPO / "config/daemon_config.yaml")          # a current config: no warning
    assert not [r for r in caplog.records if key in r.getMessage()]
    # only that key: a misspelling of it is still an unknown key
    with pytest.raises(ConfigError, match=r"daemon\.yaml: auto_repair_allow_direct_module_instal: unknown key"):
        load_daemon_config(write(tmp_path, "auto_repair_allow_direct_module_instal: true\n", "daemon.yaml"))


def test_daemon_wrong_type(tmp_path):
    path = write(tmp_path, "mentor_every_n_cycles: often\n", "daemon.yaml")
    with pytest.raises(ConfigError, match=r"daemon\.yaml: mentor_every_n_cycles: "):
        load_daemon_config(path)


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_trainer_config(tmp_path / "nope.yaml")


def test_bad_yaml_named(tmp_path):
    path = write(tmp_path, "model:\n  name: resnet10t\n  drop: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: not valid YAML(.|\n)*line 4") as err:
        load_trainer_config(path)
    assert str(path) in str(err.value)


def test_the_fast_loader_reads_every_shipped_config_as_pyyaml_does():
    """Configs are read through libyaml where PyYAML has it (ten times faster); the data must be what
    the pure-Python safe loader makes of the same files, types included."""
    from loop.config.load import SAFE_LOADER, load_yaml_text, read_yaml

    assert SAFE_LOADER is yaml.CSafeLoader      # the wheels ship libyaml: the fast path is the one tested
    shipped = sorted((REPO / "config").rglob("*.yaml"))
    assert len(shipped) == 3
    texts = [p.read_text(encoding="utf-8") for p in shipped]
    texts.append("lr: 1e-3\nwarm: 5.0e-4\nflag: on\nempty:\nwhen: 2026-12-07\nname: 'resnet10t'\nn: 0x10\n")
    for text in texts:
        expected = yaml.safe_load(text)
        assert repr(load_yaml_text(text)) == repr(expected), text[:80]   # types too: 1e-3 a str, `on` a bool
    assert read_yaml(shipped[0]) == yaml.safe_load(texts[0])
    # and what neither accepts, each refuses with the same error: a NUL, a tab indent, an unclosed list,
    # an unknown alias, a Python object tag (never constructed)
    for bad in ("a: \x00b\n", "a:\n\tb: 1\n", "key: [1, 2\n", "a: *x\n", "a: !!python/object:os.system 'ls'\n"):
        errors = []
        for load in (yaml.safe_load, load_yaml_text):
            with pytest.raises(yaml.YAMLError) as err:
                load(bad)
            errors.append(type(err.value))
        assert errors[0] is errors[1], (bad, errors)


def test_non_mapping_top_level(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_trainer_config(write(tmp_path, "- a\n- b\n"))


def test_every_bad_key_listed_once(tmp_path):
    path = write(tmp_path, "optim:\n  lr: -1\nrun:\n  epochs: zero\n")
    with pytest.raises(ConfigError) as err:
        load_trainer_config(path)
    lines = str(err.value).splitlines()
    assert any("optim.lr" in ln for ln in lines) and any("run.epochs" in ln for ln in lines)


def test_overrides_keep_types_and_validate(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n")
    cfg = load_trainer_config(path, ["optim.lr=0.01", "run.epochs=3", "optim.nesterov=false"])
    assert cfg.optim.lr == 0.01 and cfg.run.epochs == 3 and cfg.optim.nesterov is False
    with pytest.raises(ConfigError, match="model.nmae: unknown key"):
        load_trainer_config(path, ["model.nmae=x"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_trainer_config(path, ["optim.lr"])


def test_deep_merge_and_overrides_do_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    merged = deep_merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}, "d": 3} and base["a"]["b"] == 1
    assert apply_overrides(base, ["a.c=[1, 2]"])["a"]["c"] == [1, 2]


def test_kd_stabilizer_without_teacher_is_refused(tmp_path):
    path = write(tmp_path, "kd:\n  stabilizer: /some/where\n")
    with pytest.raises(ConfigError, match="kd: .*stabilizer is set but kd.teacher is not"):
        load_trainer_config(path)


def test_generic_loader_roundtrip(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"interaction_mode": "builder_health_helper"}))
    assert load_model_file(DaemonConfig, path).interaction_mode == "builder_health_helper"


@pytest.mark.slow
def test_cli_bad_config_exits_2_and_trains_nothing(tmp_path):
    path = write(tmp_path, "optim:\n  lr: fast\n")
    out = tmp_path / "run"
    result = run_cli("train", "--config", str(path), "--out", str(out))
    assert result.returncode == 2
    assert "optim.lr" in result.stderr and str(path) in result.stderr
    assert not out.exists()
