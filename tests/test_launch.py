"""Launch helpers: sweep expansion, the TPU pod command, SLURM/local distributed arguments."""

import importlib.util
import os
import subprocess

import pytest

from tests.helpers import ROOT
from vlp_jax.distributed import distributed_args


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_prints_one_command_per_point(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = _sweep_module()
    argv = ["--config", "configs/demo.py", "--root", "runs/s", "--", "--config.total_steps=5"]
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # 2 learning rates × 2 masking probabilities
    first = lines[0]
    assert "--workdir runs/s/optimizer.learning_rate=0.0005,mlm.mask_prob=0.15" in first
    assert "--config.optimizer.learning_rate=0.0005 --config.mlm.mask_prob=0.15" in first
    assert first.endswith("--config.total_steps=5")


def test_sweep_rejects_an_unknown_key_before_launching(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "bad.py"
    config.write_text(
        "from vlp_jax import config_lib\n"
        "get_config = lambda arg=None: config_lib.base_config()\n"
        "get_sweep = lambda arg=None: [{'optimizer.learning_rat': 1.0}]\n"
    )
    with pytest.raises(SystemExit, match="unknown key config.optimizer.learning_rat"):
        _sweep_module().main(["--config", str(config), "--root", "r"])


def test_tpu_pod_script_runs_main_on_every_worker():
    out = subprocess.run(
        [
            "bash",
            "launch/tpu_pod.sh",
            "pod",
            "us-east5-a",
            "--project=p",
            "--",
            "--config",
            "configs/albef.py",
            "--workdir",
            "gs://b/r",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1"},
        check=True,
    )
    cmd = out.stdout
    assert cmd.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --project=p")
    assert "--worker=all" in cmd and "vlp_jax.main" in cmd and "gs://b/r" in cmd


def test_launch_scripts_parse():
    for script in ("local.sh", "tpu_pod.sh", "slurm_gpu.sbatch"):
        subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)], check=True)


def test_distributed_arguments_from_the_launchers_environment():
    local = {
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:9",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
    }
    assert distributed_args(local) == {
        "coordinator_address": "127.0.0.1:9",
        "num_processes": 2,
        "process_id": 1,
    }
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_NTASKS": "16",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "8",
    }
    # One task per GPU: JAX's own SLURM detection gives each its local-rank GPU.
    assert distributed_args({**slurm, "SLURM_NTASKS_PER_NODE": "8(x2)"}) == {}
    # One task per node: that task drives all 8 GPUs.
    assert distributed_args({**slurm, "SLURM_NTASKS": "2"}) == {"local_device_ids": list(range(8))}
