"""Launch helpers: sweep expansion, the TPU pod command, SLURM/local distributed arguments."""

import importlib.util
import json
import os
import subprocess
import sys

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


def test_sweep_seeds_repeat_every_point_and_end_its_name(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert (
        _sweep_module().main(["--config", "configs/demo.py", "--root", "r", "--seeds", "0,7"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8  # 4 points × 2 seeds
    assert "--workdir r/optimizer.learning_rate=0.0005,mlm.mask_prob=0.15,seed=7" in lines[1]
    assert lines[1].endswith("--config.mlm.mask_prob=0.15 --config.seed=7")


def test_sweep_without_get_sweep_runs_only_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "plain.py"
    config.write_text(
        "from vlp_jax import config_lib\nget_config = lambda arg=None: config_lib.base_config()\n"
    )
    with pytest.raises(SystemExit, match="no get_sweep"):
        _sweep_module().main(["--config", str(config), "--root", "r"])
    with pytest.raises(SystemExit, match="--parallel runs points here, so it needs --run"):
        _sweep_module().main(["--config", str(config), "--root", "r", "--parallel", "2"])
    assert _sweep_module().main(["--config", str(config), "--root", "r", "--seeds", "1,2"]) == 0
    assert [
        line.split("--workdir ")[1].split()[0]
        for line in capsys.readouterr().out.split("\n")
        if line
    ] == ["r/seed=1", "r/seed=2"]


def test_parallel_runs_all_points_and_reports_a_failure(tmp_path):
    sweep = _sweep_module()
    script = (
        "import sys, time; time.sleep(0.3); print('ran', sys.argv[1]); "
        "sys.exit(3 if sys.argv[1] == 'b' else 0)"
    )
    names = ["a", "b", "c"]
    cmds = [[sys.executable, "-c", script, name] for name in names]
    logs = [str(tmp_path / f"{name}.log") for name in names]
    assert sweep.run_parallel(cmds, logs, parallel=2) == 3
    assert [open(log).read().strip() for log in logs] == ["ran a", "ran b", "ran c"]


def test_summary_gives_each_run_and_the_spread_over_seeds(tmp_path):
    sweep = _sweep_module()
    points = sweep.with_seeds([{"mlm.mask_prob": 0.5}], [0, 1, 2])
    for seed, acc in ((0, 72.0), (1, 65.0)):
        run = tmp_path / f"mlm.mask_prob=0.5,seed={seed}"
        run.mkdir()
        (run / "metrics.jsonl").write_text(
            json.dumps({"step": 50, "train/loss": 1.0})
            + "\n"
            + json.dumps({"step": 100, "eval/hardneg_acc_itm": acc - 5})
            + "\n"
            + json.dumps({"step": 200, "eval/hardneg_acc_itm": acc})
            + "\n"
        )
    result = sweep.summary(str(tmp_path), points, ["eval/hardneg_acc_itm"])
    assert [r["eval/hardneg_acc_itm"] if r["step"] else None for r in result["runs"]] == [
        72.0,
        65.0,
        None,
    ]
    assert result["over_seeds"]["mlm.mask_prob=0.5"] == {
        "runs": 2,
        "eval/hardneg_acc_itm": {"mean": 68.5, "min": 65.0, "max": 72.0},
    }
    assert "no evaluation" in sweep.format_summary(result, ["eval/hardneg_acc_itm"])
    (tmp_path / "mlm.mask_prob=0.5,seed=1" / "metrics.jsonl").write_text('{"step": 1}\n{bad\n')
    with pytest.raises(SystemExit, match=r"seed=1/metrics.jsonl:2 is not JSON"):
        sweep.summary(str(tmp_path), points, ["eval/hardneg_acc_itm"])


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
