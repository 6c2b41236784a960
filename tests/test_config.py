"""Configs load, overrides work on the command line, and bad keys or values are named."""

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


def test_config_argument_parsing():
    assert config_lib.parse_arg("tiny", size="base").size == "tiny"
    assert config_lib.parse_arg("size=tiny,steps=3", size="base", steps=1).steps == 3
    with pytest.raises(ValueError, match="'sise' is unknown"):
        config_lib.parse_arg("sise=tiny", size="base")
