"""End to end on 8 virtual CPU devices with the micro ALBEF config: train, evaluate, resume, NaN."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import ROOT, load_config, read_metrics, train_rows
from vlp_jax import objectives, train


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    config = load_config("albef", "tiny")
    final = train.train_and_evaluate(config, workdir)
    return workdir, final


def test_albef_tiny_trains_and_evaluates_on_8_devices(uninterrupted):
    workdir, final = uninterrupted
    rows = train_rows(workdir)
    assert sorted(rows) == [2, 4, 6]
    for key in (
        "train/loss",
        "train/itc",
        "train/itm",
        "train/mlm",
        "train/lr",
        "perf/pairs_per_sec",
    ):
        assert np.isfinite(rows[6][key]), key
    for key in (
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "hardneg_acc_itc",
        "hardneg_acc_itm",
        "itm_i2t_r1",
    ):
        assert 0.0 <= final[f"eval/{key}"] <= 100.0, key
    evals = [r for r in read_metrics(workdir) if "eval/i2t_r1" in r]
    assert [r["step"] for r in evals] == [6]
    # Momentum distillation: α = 0.4 · min(1, step / 3), averaged over the two steps per row.
    np.testing.assert_allclose(rows[2]["train/distill_alpha"], (0 + 0.4 / 3) / 2, rtol=1e-5)
    np.testing.assert_allclose(rows[6]["train/distill_alpha"], 0.4, rtol=1e-5)
    assert os.path.isdir(os.path.join(workdir, "tensorboard")) is False  # tiny config: off


def test_killed_run_resumes_to_the_same_result(uninterrupted, tmp_path):
    ref_dir, ref_final = uninterrupted
    workdir = str(tmp_path)
    config = load_config("albef", "tiny")
    assert train.train_and_evaluate(config, workdir, stop_at_step=3) == {}
    # The second run restores model, optimiser, step, RNG and the data iterator from step 3.
    final = train.train_and_evaluate(config, workdir)
    # Logged rows average the steps since the previous log, so compare a window both runs share.
    ref, got = train_rows(ref_dir), train_rows(workdir)
    np.testing.assert_allclose(got[6]["train/loss"], ref[6]["train/loss"], rtol=1e-5)
    for key, value in ref_final.items():
        np.testing.assert_allclose(final[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    config = load_config("albef", "tiny")
    train.train_and_evaluate(config, workdir, stop_at_step=3)

    real = objectives.make_objective

    def poisoned(model, cfg, tokens):
        objective = real(model, cfg, tokens)

        def fn(params, batch, rng):
            loss, metrics = objective(params, batch, rng)
            metrics["train/mlm"] = metrics["train/mlm"] * jnp.nan
            return loss + metrics["train/mlm"], metrics

        return fn

    monkeypatch.setattr(objectives, "make_objective", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 4: train/mlm"):
        train.train_and_evaluate(config, workdir)
    ckpts = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert ckpts == [3]


def test_clip_tiny_dual_encoder_trains(tmp_path):
    config = load_config("clip", "tiny")
    config.mesh = (("data", 4), ("fsdp", 2))
    final = train.train_and_evaluate(config, str(tmp_path))
    assert "eval/hardneg_acc_itm" not in final
    assert 0.0 <= final["eval/i2t_r1"] <= 100.0
    assert set(train_rows(str(tmp_path))[4]) >= {"train/itc", "train/loss"}


def test_standalone_evaluation_matches_the_loop(uninterrupted):
    workdir, final = uninterrupted
    cmd = [
        sys.executable,
        "-m",
        "vlp_jax.evaluate",
        "--config",
        "configs/albef.py:tiny",
        "--workdir",
        workdir,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step 6 of" in out.stdout
    mean_r1 = (final["eval/i2t_r1"] + final["eval/t2i_r1"]) / 2
    assert f"mean R@1 (i→t, t→i)            {mean_r1:.1f}" in out.stdout


def test_two_processes_train_and_resume_like_one(uninterrupted, tmp_path):
    """2 processes × 4 CPU devices through jax.distributed == 1 process × 8 devices, also across
    a stop and restart of both processes."""
    ref_dir, ref_final = uninterrupted
    workdir = str(tmp_path / "two_processes")
    args = ["--config", "configs/albef.py:tiny", "--workdir", workdir]

    def launch(*extra):
        out = subprocess.run(
            ["bash", "launch/local.sh", "2", "4", "--", *args, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]},
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    launch("--stop_at_step=4")
    ref, got = train_rows(ref_dir), train_rows(workdir)
    assert sorted(got) == [2, 4]
    for step in (2, 4):
        for key in ("train/loss", "train/itc", "train/itm", "train/mlm"):
            np.testing.assert_allclose(got[step][key], ref[step][key], rtol=1e-5, err_msg=key)
    setup = json.loads(open(os.path.join(workdir, "setup.json")).read())
    assert setup["processes"] == 2 and setup["devices"] == 8
    # Each process wrote its own data-iterator state next to the shared model state.
    data_dir = os.path.join(workdir, "checkpoints", "4", "data")
    data_states = sorted(f for f in os.listdir(data_dir) if f.startswith("process_"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]

    stdout = launch()  # both processes restore model, optimiser and their data positions
    assert "resumed from the checkpoint of step 4" in stdout
    got = train_rows(workdir)
    np.testing.assert_allclose(got[6]["train/loss"], ref[6]["train/loss"], rtol=1e-5)
    final = [r for r in read_metrics(workdir) if "eval/i2t_r1" in r][-1]
    for key in ("eval/i2t_r1", "eval/t2i_r1", "eval/hardneg_acc_itm"):
        np.testing.assert_allclose(final[key], ref_final[key], atol=1e-4, err_msg=key)


KILL_SCRIPT = """
import os, signal, sys
from absl import app
from vlp_jax import checkpoint, main

real_save = checkpoint.Checkpointer.save

def save_then_die(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)  # asynchronous: the write is still going on
    if step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.Checkpointer.save = save_then_die
sys.argv = ["vlp_jax.main", *sys.argv[1:]]
app.run(main.main, flags_parser=main.parse_flags)
"""


def test_sigkilled_run_restarts_from_its_last_complete_checkpoint(uninterrupted, tmp_path):
    """SIGKILL at a random step, during that step's checkpoint write; the same command then
    resumes from the last complete checkpoint and ends with the uninterrupted run's metrics."""
    ref_dir, ref_final = uninterrupted
    workdir = str(tmp_path / "run")
    args = ["--config", "configs/albef.py:tiny", "--workdir", workdir]
    args.append("--config.checkpoint_every_steps=1")  # any step can be the one killed
    kill_at = random.Random().randint(2, 5)
    env = {**os.environ, "KILL_AT_STEP": str(kill_at)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
    ckpt_dir = os.path.join(workdir, "checkpoints")
    complete = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert complete and complete[-1] in (kill_at - 1, kill_at), (kill_at, os.listdir(ckpt_dir))
    # A later step whose write never finished (as Orbax names it until the final rename).
    shutil.copytree(
        os.path.join(ckpt_dir, str(complete[-1])),
        os.path.join(ckpt_dir, "5.orbax-checkpoint-tmp-1234"),
    )

    resumed = subprocess.run(
        [sys.executable, "-m", "vlp_jax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, (kill_at, resumed.stderr[-2000:])
    assert f"resumed from the checkpoint of step {complete[-1]}" in resumed.stdout
    final = {r["step"]: r for r in read_metrics(workdir) if "eval/i2t_r1" in r}[6]
    for key, value in ref_final.items():
        np.testing.assert_allclose(final[key], value, rtol=1e-4, atol=1e-4, err_msg=(kill_at, key))


def test_unwritable_or_full_workdir_fails_before_training(tmp_path, monkeypatch):
    config = load_config("albef", "tiny")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match=r"workdir .*a_file/run' is not writable"):
        train.train_and_evaluate(config, str(blocker / "run"))

    real_usage = shutil.disk_usage
    monkeypatch.setattr(
        train.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10 * 2**20)
    )
    with pytest.raises(RuntimeError, match=r"has 10 MiB free; at least 64 MiB needed"):
        train.train_and_evaluate(config, str(tmp_path / "full"))
    assert os.listdir(tmp_path / "full") == []  # nothing written: no checkpoint, no metrics
