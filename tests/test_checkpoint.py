"""Checkpoint fingerprints: a resume or evaluation with another tokenizer vocabulary or dataset
version stops with an error instead of reading the saved weights wrongly."""

import jax.numpy as jnp
import pytest

from tests.helpers import load_config
from vlp_jax import checkpoint, evaluate
from vlp_jax.data import shapes
from vlp_jax.data.tokenizer import load_tokenizer


def _save(directory, fingerprint):
    ckpt = checkpoint.Checkpointer(str(directory), every=1, keep=1)
    args = {"state": checkpoint.ocp.args.StandardSave({"w": jnp.ones(3)})}
    if fingerprint is not None:
        args["fingerprint"] = checkpoint.ocp.args.JsonSave(fingerprint)
    ckpt.manager.save(1, args=checkpoint.ocp.args.Composite(**args))
    ckpt.manager.wait_until_finished()
    return ckpt


def test_resume_with_another_tokenizer_or_dataset_version_is_refused(tmp_path, monkeypatch):
    config = load_config("demo")
    now = checkpoint.run_fingerprint(config, load_tokenizer(config.data.tokenizer))
    assert set(now) == {"tokenizer_vocab_sha256", "shapes_generator_version"}
    ckpt = _save(tmp_path / "a", now)
    ckpt.check_fingerprint(now)  # same tokenizer and data: fine
    monkeypatch.setattr(shapes, "GENERATOR_VERSION", shapes.GENERATOR_VERSION + 1)
    later = checkpoint.run_fingerprint(config, load_tokenizer(config.data.tokenizer))
    with pytest.raises(ValueError, match=r"shapes_generator_version: saved '\d+', now '\d+'"):
        ckpt.check_fingerprint(later)
    with pytest.raises(ValueError, match="another tokenizer or dataset"):
        checkpoint.check_fingerprint(ckpt.manager, 1, {**now, "tokenizer_vocab_sha256": "x"})
    ckpt.close()


def test_checkpoint_without_fingerprint_warns_and_goes_on(tmp_path, caplog):
    ckpt = _save(tmp_path / "old", None)
    with caplog.at_level("WARNING"):
        ckpt.check_fingerprint({"tokenizer_vocab_sha256": "x"})
    assert "has no fingerprint" in caplog.text
    ckpt.close()


def test_standalone_evaluation_checks_the_fingerprint(tmp_path, monkeypatch):
    config = load_config("albef", "tiny")
    monkeypatch.setattr(checkpoint, "run_fingerprint", lambda *_: {"shapes_generator_version": "0"})
    _save(tmp_path / "checkpoints", {"shapes_generator_version": "1"}).close()
    with pytest.raises(ValueError, match="saved '1', now '0'"):
        evaluate.restore_params(config, str(tmp_path), None, None)
