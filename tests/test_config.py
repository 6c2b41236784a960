"""Configs load, overrides work on the command line, and bad keys or values are named."""

import math
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_config
from vlp_jax import config_lib


@pytest.mark.parametrize(
    "name,arg",
    [
        ("demo", None),
        ("albef", None),
        ("albef", "demo"),
        ("albef", "tiny"),
        ("clip", None),
        ("clip", "demo"),
        ("clip", "tiny"),
        ("grit_vlp", None),
        ("grit_vlp", "demo"),
        ("grit_vlp", "tiny"),
    ],
)
def test_every_config_validates(name, arg):
    config_lib.validate(load_config(name, arg))


def test_config_typo_on_command_line_names_the_key(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "vlp_jax.main",
        "--config",
        "configs/albef.py:tiny",
        "--config.batch_sise=8",
        "--workdir",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "config.batch_sise" in out.stderr
    assert not os.listdir(tmp_path)


def test_bad_values_name_the_key_and_accepted_values():
    config = load_config("albef", "tiny")
    config.model.kind = "albfe"
    with pytest.raises(ValueError, match=r"config.model.kind='albfe'.*\['albef', 'dual_encoder'\]"):
        config_lib.validate(config)
    config = load_config("clip", "tiny")
    config.loss_weights.itm = 1.0
    with pytest.raises(ValueError, match="config.loss_weights.itm"):
        config_lib.validate(config)
    config = load_config("albef", "tiny")
    config.itm.warmup_steps = 100
    with pytest.raises(ValueError, match="config.itm.warmup_temperature=0.0 must be a positive"):
        config_lib.validate(config)
    config.itm.warmup_temperature, config.itm.mode = 1.0, "argmax"
    with pytest.raises(ValueError, match="warmup_steps=100 anneals the sampling temperature"):
        config_lib.validate(config)
    config = load_config("albef", "tiny")
    config.itm.mode = "max"
    with pytest.raises(ValueError, match="config.itm.mode='max'"):
        config_lib.validate(config)
    config = load_config("grit_vlp", "tiny")
    config.grit.scope = "host"
    with pytest.raises(ValueError, match=r"config.grit.scope='host'.*\['global', 'process'\]"):
        config_lib.validate(config)
    config.grit.scope, config.grit.refresh_every_steps = "process", -2
    with pytest.raises(ValueError, match="config.grit.refresh_every_steps=-2 must be >= 0"):
        config_lib.validate(config)
    config.grit.refresh_every_steps = 2
    config_lib.validate(config)  # refresh periods work in both scopes
    config = load_config("albef", "tiny")
    config.model.image.pos_embed_init = "rope"
    with pytest.raises(ValueError, match="config.model.image.pos_embed_init='rope'"):
        config_lib.validate(config)
    config.model.image.pos_embed_init, config.model.init_std = "normal", 0.0
    with pytest.raises(ValueError, match="config.model.init_std=0.0 must be a positive number"):
        config_lib.validate(config)


def test_schedule_steps_stop_the_cosine_part_way_as_grit_does():
    from vlp_jax import optim

    config = load_config("grit_vlp", None)
    schedule = optim.learning_rate_schedule(config.optimizer, config.total_steps)
    # GRIT-VLP: ALBEF's 30-epoch cosine, stopped after 20; per step, lr = 1e-5 + 0.5·9e-5·(1 +
    # cos(π·(198k / 298k))) at the last step.
    expected = 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * 198_000 / 298_000))
    assert float(schedule(config.total_steps)) == pytest.approx(expected, rel=1e-4)
    assert float(schedule(config.total_steps)) == pytest.approx(3.25e-5, rel=0.01)
    config.optimizer.schedule_steps = 0  # the run's own length: the cosine ends at the minimum
    schedule = optim.learning_rate_schedule(config.optimizer, config.total_steps)
    assert float(schedule(config.total_steps)) == pytest.approx(1e-5)
    config.optimizer.schedule_steps = config.total_steps - 1
    with pytest.raises(ValueError, match="config.optimizer.schedule_steps=199999 ends the cosine"):
        config_lib.validate(config)


def test_config_argument_parsing():
    assert config_lib.parse_arg("tiny", size="base").size == "tiny"
    assert config_lib.parse_arg("size=tiny,steps=3", size="base", steps=1).steps == 3
    with pytest.raises(ValueError, match="'sise' is unknown"):
        config_lib.parse_arg("sise=tiny", size="base")
