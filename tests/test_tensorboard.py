"""``--report_to tensorboard``: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from wfvae.training.metrics_logger import MetricsLogger, parse_report_to  # noqa: E402


def _events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_frames_and_config_reach_tensorboard_and_jsonl(tmp_path):
    logger = MetricsLogger(tmp_path, report_to="tensorboard", config={"lr": 1e-4, "exp_name": "tb"})
    logger.log({"train/loss": 0.5, "train/lr": 1e-4, "event": "resume"}, step=1)
    logger.log({"train/loss": 0.25, "train/nan": float("nan")}, step=2)
    video = np.zeros((9, 8, 6, 3), np.uint8)
    video[:, :, :, 0] = np.arange(9, dtype=np.uint8)[:, None, None] * 20  # red grows over time
    logger.log_videos("val/recon", [video], step=2, fps=4)
    logger.close()

    acc = _events(tmp_path)
    loss = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 0.5), (2, 0.25)]
    assert np.isnan(acc.Scalars("train/nan")[0].value)
    assert "event" not in acc.Tags()["scalars"]  # text values stay in metrics.jsonl
    (image,) = acc.Images("val/recon/0")
    assert image.step == 2 and (image.width, image.height) == (5 * 6, 8)  # 5 frames side by side
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"exp_name": "tb"' in config_text
    # metrics.jsonl is written whatever the trackers (what `wfvae report` reads)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"val/recon_files"' in lines[2]


def test_report_to_parsing():
    assert parse_report_to("none") == []
    assert parse_report_to("tensorboard") == ["tensorboard"]
    assert parse_report_to("wandb, tensorboard") == ["wandb", "tensorboard"]
    for bad in ("tensorbord", "none,wandb", ""):
        with pytest.raises(ValueError, match="report_to"):
            parse_report_to(bad)


def test_training_run_writes_tensorboard_events_and_report_still_reads_jsonl(tmp_path):
    from train_utils import base_args, make_data, run_dir

    from wfvae.report.html import main as report_main
    from wfvae.training.trainer import main as train_main

    paths = make_data(tmp_path / "data")
    argv = base_args(paths, tmp_path / "ckpt", max_steps=1, report_to="tensorboard")  # validates after step 1
    assert train_main(argv) == 0
    run = run_dir(tmp_path / "ckpt")
    acc = _events(run)
    assert [e.step for e in acc.Scalars("train/loss")] == [1]
    assert any(tag.startswith("val/") for tag in acc.Tags()["scalars"])
    assert acc.Tags()["images"], "validation frames"
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert report_main([str(run), "--out", str(tmp_path / "report.html")]) == 0
    assert "loss" in (tmp_path / "report.html").read_text()  # curves from metrics.jsonl
