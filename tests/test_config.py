"""TrainConfig: pydantic validation with one ConfigError naming the key, immutable and hashable."""
import pytest

from regimes import TrainConfig
from regimes.core.config import describe_fields
from regimes.errors import ConfigError


def test_strings_from_the_command_line_are_parsed_by_field_type():
    cfg = TrainConfig.from_cli(["elr=1e-2", "epochs=5", "augment=no", "schedule=step", "milestones=[0.3, 0.6]",
                                "width=8.0"])
    assert (cfg.elr, cfg.epochs, cfg.augment, cfg.milestones, cfg.width) == (0.01, 5, False, (0.3, 0.6), 8)


def test_a_config_is_immutable_hashable_and_round_trips():
    cfg = TrainConfig(schedule="piecewise", knots=[[0.0, 0.1], [1.0, 0.01]])
    assert cfg.knots == ((0.0, 0.1), (1.0, 0.01))
    assert hash(cfg) == hash(TrainConfig.from_dict(cfg.to_dict())) and cfg == TrainConfig.from_dict(cfg.to_dict())
    with pytest.raises(Exception):
        cfg.elr = 1.0
    assert cfg.replace(elr=0.5).elr == 0.5 and cfg.elr == TrainConfig().elr


@pytest.mark.parametrize("values,key,fragment", [
    ({"epochs": True}, "epochs", "expected an integer"),
    ({"elr": "fast"}, "elr", "expected a number"),
    ({"elr": float("nan")}, "elr", "must be finite"),
    ({"elr": 0}, "elr", "allowed: > 0.0"),
    ({"noninv_lr": -1}, None, None),                           # an allowed value outside the range
    ({"noninv_lr": -0.5}, "noninv_lr", "allowed: >= 0.0 or -1.0"),
    ({"augment": "maybe"}, "augment", "expected a boolean"),
    ({"model": "vgg"}, "model", "one of convnet"),
    ({"learning_rate": 0.1}, "learning_rate", "unknown config key"),
    ({"elrr": 0.1}, "elrr", "did you mean elr"),
    ({"schedule": "exponential"}, "elr_final", "needs elr_final > 0"),
    ({"knots": [[0.5]]}, "knots", "[fraction, rate] pairs"),
    ({"model": "resnet18_si", "depth": 3}, "depth", "fixed depth"),
])
def test_bad_values_raise_one_config_error_naming_the_key(values, key, fragment):
    if key is None:
        TrainConfig(**values)
        return
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(values)
    assert e.value.key == key and fragment in e.value.message, str(e.value)


def test_errors_in_a_spec_section_carry_its_path():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"width": 0}, where="base")
    assert e.value.key == "base.width"


def test_help_lists_every_field_with_what_is_allowed():
    text = describe_fields()
    assert all(f"  {name} " in text for name in TrainConfig.field_names())
    assert "one of sphere, free" in text and "milestones" in text and "[0.5, 0.75]" in text
