"""trainer.config: YAML + overrides + merge on the schema, and errors that name the culprit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf.errors import ReadonlyConfigError

from trainer import config
from trainer.config import ConfigError
from trainer.config_schema import TrainerConfig, limits


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_schema_dataclass_defaults():
    assert config.default().to_dict() == dataclasses.asdict(TrainerConfig())


def test_file_values_override_defaults_and_the_rest_stay_default(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\noptim:\n  lr: 0.05\n")
    cfg = config.load(path)
    expected = dataclasses.asdict(TrainerConfig())
    expected["train"]["epochs"] = 3
    expected["optim"]["lr"] = 0.05
    assert cfg.to_dict() == expected


def test_dotted_and_attribute_access_agree():
    cfg = config.from_dotlist(["optim.lr=0.25", "model.hidden=[32,16]"])
    assert cfg.get("optim.lr") == cfg.optim.lr == cfg["optim.lr"] == 0.25
    assert list(cfg.get("model.hidden")) == [32, 16]
    assert cfg.get("train.no_such_key", "fallback") == "fallback"
    assert cfg.get("no.such.section") is None
    assert "optim.lr" in cfg and "optim.nope" not in cfg
    with pytest.raises(KeyError, match=r"optim\.nope"):
        cfg["optim.nope"]


def test_overrides_are_coerced_to_the_schema_types_and_beat_the_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  epoch_length: 7\n")
    cfg = config.load(path, ["train.epochs=20", "train.epoch_length=null", "data.shuffle=false"])
    assert cfg.train.epochs == 20 and isinstance(cfg.train.epochs, int)
    assert cfg.train.epoch_length is None
    assert cfg.data.shuffle is False


def test_merge_later_wins_and_lists_are_replaced(tmp_path):
    base = config.load(write(tmp_path, "model:\n  hidden: [64, 64, 64]\ntrain:\n  epochs: 3\n"))
    top = config.load(write(tmp_path, "model:\n  hidden: [8]\n", name="top.yaml"))
    merged = config.merge(base, top, {"optim": {"lr": 0.5}})
    assert list(merged.model.hidden) == [8]
    assert merged.train.epochs == 3  # set by base only; top's defaults do not reset it
    assert merged.optim.lr == 0.5
    assert merged.source_of("model.hidden") == str(tmp_path / "top.yaml")
    assert merged.source_of("train.epochs") == str(tmp_path / "job.yaml")
    assert merged.source_of("run.seed") == config.DEFAULTS


def test_interpolations_are_resolved_in_to_dict_and_yaml(tmp_path):
    cfg = config.load(write(tmp_path, "run:\n  name: exp\n  dir: out/${run.name}\n"))
    assert cfg.to_dict()["run"]["dir"] == "out/exp"
    assert "dir: out/exp" in cfg.to_yaml()


def test_saved_config_loads_back_equal(tmp_path):
    cfg = config.from_dotlist(["train.epochs=2", "model.hidden=[10,20]", "extra.note=hi"])
    again = config.load(cfg.save(tmp_path / "resolved.yaml"))
    assert again == cfg


def test_freeze_refuses_assignment_and_to_dict_is_plain():
    cfg = config.default()
    cfg.train.epochs = 9  # allowed before freezing
    cfg.freeze()
    assert cfg.frozen
    with pytest.raises(ReadonlyConfigError):
        cfg.train.epochs = 10
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["model"]["hidden"]) is list
    assert plain["train"]["epochs"] == 9


def test_extra_holds_free_form_keys():
    cfg = config.from_dotlist(["extra.wandb.project=demo", "extra.tags=[a,b]"])
    assert cfg.get("extra.wandb.project") == "demo"
    assert list(cfg.extra.tags) == ["a", "b"]


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.key == "train.epocs"
    assert str(path) in str(err.value)
    assert "did you mean 'train.epochs'" in str(err.value)


def test_unknown_section_names_the_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'") as err:
        config.load(write(tmp_path, "trian:\n  epochs: 3\n"))
    assert err.value.key == "trian"


def test_wrong_type_names_key_and_source(tmp_path):
    path = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"'train\.epochs'") as err:
        config.load(path)
    assert err.value.source == str(path)
    with pytest.raises(ConfigError, match=r"'train\.epochs=many'"):
        config.from_dotlist(["train.epochs=many"])


def test_section_replaced_by_a_scalar_names_the_section(tmp_path):
    with pytest.raises(ConfigError, match="'optim'") as err:
        config.load(write(tmp_path, "optim: 3\n"))
    assert err.value.key == "optim"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("optim.lr=-0.1", "optim.lr"),
        ("optim.name=rmsprop", "optim.name"),
        ("model.hidden=[32,0]", "model.hidden"),
        ("checkpoint.unit=step", "checkpoint.unit"),
    ],
)
def test_out_of_range_values_name_key_and_the_override(override, key):
    with pytest.raises(ConfigError) as err:
        config.from_dotlist([override])
    assert err.value.key == key
    assert key in str(err.value) and override in str(err.value)


def test_out_of_range_value_from_file_names_the_file(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"'data\.batch_size'") as err:
        config.load(path)
    assert err.value.source == str(path)


def test_optional_keys_accept_null():
    cfg = config.from_dotlist(["checkpoint.every=null", "early_stopping.patience=null"])
    assert cfg.checkpoint.every is None and cfg.early_stopping.patience is None


def test_broken_interpolation_names_the_key():
    with pytest.raises(ConfigError, match=r"'run\.name'") as err:
        config.from_dotlist(["run.name=${no.such.key}"])
    assert err.value.key == "run.name"


@pytest.mark.parametrize("bad", ["train.epochs", "=3", " =1"])
def test_malformed_override_is_named(bad):
    with pytest.raises(ConfigError, match="key=value") as err:
        config.from_dotlist([bad])
    assert bad in str(err.value)


def test_missing_file_invalid_yaml_and_non_mapping_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"not found: .*absent\.yaml"):
        config.load(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        config.load(write(tmp_path, "train: [1, 2\n", name="bad.yaml"))
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        config.load(write(tmp_path, "- 1\n- 2\n", name="list.yaml"))


def test_empty_file_gives_the_defaults(tmp_path):
    assert config.load(write(tmp_path, "")) == config.default()


@dataclass
class QueueSection:
    url: str = "memory://"
    batch: int = field(default=64, metadata=limits(ge=1))


@dataclass
class ExtendedConfig(TrainerConfig):
    queue: QueueSection = field(default_factory=QueueSection)


def test_schema_extends_with_a_new_section(tmp_path):
    cfg = config.load(
        write(tmp_path, "queue:\n  batch: 8\n"), ["train.epochs=2"], schema=ExtendedConfig
    )
    assert cfg.get("queue.batch") == 8 and cfg.train.epochs == 2
    with pytest.raises(ConfigError) as err:
        config.load(None, ["queue.batch=0"], schema=ExtendedConfig)
    assert err.value.key == "queue.batch"
    with pytest.raises(ConfigError, match="unknown key 'queue'"):
        config.from_dotlist(["queue.batch=8"])  # the default schema has no queue section


def test_copies_stay_configs():
    import copy

    cfg = config.from_dotlist(["train.epochs=4"])
    clone = copy.deepcopy(cfg)
    assert isinstance(clone, config.Config) and clone == cfg
    clone.train.epochs = 6
    assert cfg.train.epochs == 4


# -- the module functions any program uses (no trainer schema) ----------------------------


def test_from_dict_takes_any_keys_and_dotted_get_reaches_them():
    cfg = config.from_dict({"project": "demo", "model": {"type": "cnn", "layers": [3, 4]}})
    assert cfg.get("project") == "demo"
    assert cfg.get("model.type") == cfg.model.type == "cnn"
    assert cfg.get("model.missing", 7) == 7
    assert config.to_dict(cfg) == {"project": "demo", "model": {"type": "cnn", "layers": [3, 4]}}


def test_from_cli_dotlist_accepts_both_spellings_and_later_wins():
    cfg = config.from_cli_dotlist(
        ["train.epochs=20", "--train.lr=0.005", "--model.type", "cnn", "train.epochs=30"]
    )
    assert cfg.get("train.epochs") == 30
    assert cfg.get("train.lr") == 0.005
    assert cfg.get("model.type") == "cnn"


def test_module_merge_of_mappings_is_schema_free_and_later_wins():
    base = config.from_dict({"project": "p", "train": {"lr": 0.1, "epochs": 3}})
    merged = config.merge(base, config.from_cli_dotlist(["--train.lr=0.01"]), {"tag": "x"})
    assert merged.to_dict() == {"project": "p", "train": {"lr": 0.01, "epochs": 3}, "tag": "x"}
    assert merged.source_of("train.lr") == "override 'train.lr=0.01'"
    plain = config.merge({"a": {"b": 1}}, {"a": {"c": 2}})
    assert plain.to_dict() == {"a": {"b": 1, "c": 2}}


def test_freeze_function_makes_any_config_read_only():
    cfg = config.freeze(config.from_dict({"a": {"b": 1}}))
    assert cfg.frozen
    with pytest.raises(ReadonlyConfigError):
        cfg.a.b = 2


def test_a_schema_when_given_still_names_the_bad_key_and_its_source():
    with pytest.raises(ConfigError) as err:
        config.from_dict({"train": {"epocs": 3}}, schema=TrainerConfig)
    assert err.value.key == "train.epocs"
    assert "did you mean 'train.epochs'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.from_cli_dotlist(["--train.epochs=0"], schema=TrainerConfig)
    assert err.value.key == "train.epochs" and "train.epochs=0" in str(err.value)


def test_cli_words_that_are_not_overrides_are_refused_by_name():
    with pytest.raises(ConfigError, match="'epochs'"):
        config.from_cli_dotlist(["epochs"])
