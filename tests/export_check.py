"""Reads what `sweep export` wrote back with the real libraries, and compares it
with what `sweep report --format json` says about the same runs.

    python tests/export_check.py REPORT.json TENSORBOARD_DIR MLFLOW_DIR

Run by scripts/check-export.sh (which installs tensorboard and mlflow-skinny
from PyPI into a virtual environment); exits non-zero on the first mismatch.
"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from mlflow.tracking import MlflowClient


def close(a, b, what):
    # TensorBoard stores scalars as 32-bit floats; the report rounds (losses 6 decimals, accuracies 4).
    if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-4):
        sys.exit(f"{what}: {a} != {b}")


def main(report_path, tb_dir, ml_dir):
    report = json.load(open(report_path))
    runs = [r for r in report["runs"] if r["epochs"]]
    assert runs, "the report has no run with epochs"

    # TensorBoard: one folder per run; scalars per epoch; the hparams session.
    folders = sorted(os.listdir(tb_dir))
    assert len(folders) == len(runs), (folders, [r["name"] for r in runs])
    for r in runs:
        folder = next(f for f in folders if f.endswith(r["id"]))
        acc = event_accumulator.EventAccumulator(
            os.path.join(tb_dir, folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
        )
        acc.Reload()
        tags = acc.Tags()["scalars"]
        for tag, field in [("train/loss", "train_loss"), ("train/acc", "train_acc"), ("test/loss", "test_loss"),
                           ("test/acc", "test_acc"), ("lr", "lr")]:
            assert tag in tags, (tag, tags)
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [e["epoch"] for e in r["epochs"]], (tag, events)
            for e, rec in zip(events, r["epochs"]):
                close(e.value, rec[field], f"{r['name']} {tag} epoch {rec['epoch']}")
        start = [m for m in acc.Tags()["tensors"] if m == hp_metadata.SESSION_START_INFO_TAG]
        assert start, acc.Tags()
        content = acc.SummaryMetadata(hp_metadata.SESSION_START_INFO_TAG).plugin_data.content
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        hp = data.session_start_info.hparams
        # One session group per run: TensorBoard's table shows each run as a row.
        assert data.session_start_info.group_name == "", data
        close(hp["optimizer.lr"].number_value, r["config"]["optimizer"]["lr"], "hparam optimizer.lr")
        assert hp["model"].string_value == r["config"]["model"], hp["model"]
        end = acc.SummaryMetadata(hp_metadata.SESSION_END_INFO_TAG).plugin_data.content
        status = plugin_data_pb2.HParamsPluginData.FromString(end).session_end_info.status
        assert status == (1 if r["status"] == "done" else status), status
    print(f"tensorboard: {len(runs)} run(s), scalars and hparams read back by tensorboard")

    # MLflow: an experiment per sweep, params, metric histories, tags, the best checkpoint.
    client = MlflowClient(tracking_uri="file://" + os.path.abspath(ml_dir))
    experiments = {e.name: e for e in client.search_experiments()}
    for r in runs:
        exp = experiments[r["sweep"]]
        found = client.search_runs([exp.experiment_id], filter_string=f"tags.`sweep.key` = '{r['key']}'")
        assert len(found) == 1, (r["name"], found)
        run = found[0]
        assert run.info.run_name == r["name"], run.info
        assert run.info.status == ("FINISHED" if r["status"] == "done" else run.info.status), run.info.status
        close(float(run.data.params["optimizer.lr"]), r["config"]["optimizer"]["lr"], "param optimizer.lr")
        assert run.data.params["model"] == r["config"]["model"]
        for key in ["train_loss", "test_acc", "lr"]:
            hist = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in hist] == [e["epoch"] for e in r["epochs"]], (key, hist)
            for m, rec in zip(hist, r["epochs"]):
                close(m.value, rec[key], f"{r['name']} {key} epoch {rec['epoch']}")
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"best.safetensors", "config.json"} <= names, names
        assert run.data.tags["sweep.status"] == r["status"]
    print(f"mlflow: {len(runs)} run(s) in {len({r['sweep'] for r in runs})} experiment(s), "
          "params, metric histories, tags and artifacts read back by mlflow")


if __name__ == "__main__":
    main(*sys.argv[1:4])
