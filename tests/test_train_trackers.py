"""`train --report-to` through accelerate's trackers, offline (WANDB_MODE=offline, MLflow's local file store),
with the run's config logged; train's rich progress bar (steps, loss, reward accuracy, ETA) on stderr."""
from __future__ import annotations

import glob
import json
import os

import pytest

from conftest import run_cli
from stepdpo_cli.records import InputError
from stepdpo_cli.train.setup import tracker_names
from test_datasets_train import math_step_dpo_rows

pytestmark = pytest.mark.timeout(300)


def test_report_to_names():
    assert tracker_names("none") == [] and tracker_names("") == []
    assert tracker_names("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    with pytest.raises(InputError, match="'comet' is not one of none, tensorboard, wandb, mlflow, trackio"):
        tracker_names("tensorboard,comet")


def test_wandb_tensorboard_mlflow_offline_and_progress_bar(tiny_model, tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in math_step_dpo_rows(8)))
    out = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": "",
           "FORCE_COLOR": "1", "HOME": str(tmp_path)}  # FORCE_COLOR: rich draws its bar as on a terminal
    proc = run_cli("train", "--model", tiny_model, "--data", str(data), "--output", str(out), "--batch-size", "2",
                   "--max-steps", "3", "--lr", "1e-3", "--report-to", "wandb,tensorboard,mlflow", env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    metrics = [json.loads(line) for line in proc.stdout.decode().splitlines()]  # stdout: metrics JSONL only
    assert [m["step"] for m in metrics] == [1, 2, 3]

    # tensorboard: the metrics as scalars under OUTPUT/runs
    [events] = glob.glob(str(out / "runs" / "stepdpo" / "events.out.tfevents.*"))
    scalars = EventAccumulator(events).Reload().Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [round(s.value, 5) for s in scalars] == [round(m["loss"], 5) for m in metrics]

    # wandb offline: one run file under OUTPUT/wandb holding the config and the metrics
    [run_file] = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    content = open(run_file, "rb").read()
    for needle in (b"beta", b"step-dpo", b"train/loss", b"train/reward_accuracy"):
        assert needle in content, needle

    # mlflow: a file store under OUTPUT/mlruns with the config as params and the metrics per step
    [run_dir] = [d for d in glob.glob(str(out / "mlruns" / "*" / "*")) if os.path.isdir(os.path.join(d, "params"))]
    assert open(os.path.join(run_dir, "params", "beta")).read() == "0.4"
    assert open(os.path.join(run_dir, "params", "objective")).read() == "step-dpo"
    loss_lines = open(os.path.join(run_dir, "metrics", "train", "loss")).read().split("\n")
    assert [line.split()[2] for line in loss_lines if line] == ["1", "2", "3"]

    # the progress bar: steps done of total, the last loss and reward accuracy, the time left
    assert "3/3" in err and "eta" in err
    assert f"loss {metrics[-1]['loss']:.4f}  reward acc {metrics[-1]['reward_accuracy']:.4f}" in err


def test_missing_tracker_package_is_a_usage_error(tiny_model, tmp_path):
    try:
        import trackio  # noqa: F401
        pytest.skip("trackio is installed here")
    except ImportError:
        pass
    proc = run_cli("train", "--model", tiny_model, "--data", str(tmp_path / "x.jsonl"), "--output",
                   str(tmp_path / "o"), "--report-to", "tensorboard,trackio")
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().endswith("trackio is not installed (pip install 'stepdpo[trackers]' or pip "
                                                 "install trackio)")
