"""Training reads every container the dataset reads: a folder holding only .m4v / .ts / .mpg files passes
``--check_only`` and trains (the config check and the dataset share wfvae.formats.VIDEO_EXTENSIONS)."""

from __future__ import annotations

import json

from train_utils import TINY_WFVAE, base_args, load_ckpt, run_dir, train_records

from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_write import write_video
from wfvae.formats import VIDEO_EXTENSIONS
from wfvae.training.trainer import main

# container -> encoder: real files of each kind, as cameras and broadcast captures produce them
FILES = {"a.m4v": None, "sub/b.ts": "libx264", "sub/c.mpg": "mpeg2video"}


def test_folder_of_m4v_ts_mpg_checks_and_trains(tmp_path, capsys):
    videos = tmp_path / "videos"
    for i, (name, codec) in enumerate(FILES.items()):
        write_video(videos / name, make_synthetic_video(12, 40, 48, seed=i), fps=24, codec=codec)
    assert {(videos / n).suffix for n in FILES} <= VIDEO_EXTENSIONS
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_WFVAE))
    data = {"train": videos, "val": videos, "config": config}
    args = base_args(data, tmp_path / "runs", max_steps=3, eval_video_path=None, save_ckpt_step=1000)

    assert main(args + ["--check_only"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    assert main(args) == 0
    run = run_dir(tmp_path / "runs")
    assert load_ckpt(run / "checkpoint-3.ckpt")["current_step"] == 3
    seen = sorted(i for record in train_records(run).values() for i in record["data/index"])
    assert seen == [0, 1, 2]  # one epoch: each of the three files once
