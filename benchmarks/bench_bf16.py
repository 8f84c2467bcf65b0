"""bf16 inference on CPU against fp32: time of one round trip and what it costs in PSNR/SSIM.

What runs, per clip, in one process: the round trip ``reconstruct`` does (encode, posterior mode,
decode, clamp) twice, once in float32 and once under ``torch.autocast("cpu", torch.bfloat16)``
(``wfvae reconstruct --dtype bf16``: weights stay float32, convolutions and matmuls run in bf16,
normalisations in float32). Each is timed after one warm-up call; the two precisions alternate clip by
clip so that load changes hit both alike.

Clips: camera motions over photographs (scikit-image's sample photos, see ``wfvae.demo.dataset``),
rendered at the requested size. With ``--config`` the model has random weights: the PSNR against the
input is then meaningless, but the difference between fp32 and bf16 is still the rounding cost of
bf16 in that architecture. Pass ``--ckpt`` (a trained model folder) for costs on a model that
reconstructs. ``--video_dir`` takes the clips from real video files instead (every file in the folder,
sorted, in turn; consecutive clips of one file start ``2 * num_frames`` frames apart), each scaled so
its short side is ``--resolution`` and centre-cropped as ``wfvae reconstruct`` does.

    python benchmarks/bench_bf16.py --config examples/configs/wfvae-large-16chn.json \\
        --num_frames 17 --resolution 128 --clips 3 --out benchmarks/results/bf16_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info  # noqa: E402  (same folder)

from wfvae.data.transforms import resize_crop, to_model_tensor  # noqa: E402
from wfvae.data.video_read import read_video  # noqa: E402
from wfvae.demo.dataset import MOTIONS, PHOTOS, VAL_PHOTOS, load_photo, make_demo_clip  # noqa: E402
from wfvae.errors import VideoDecodeError  # noqa: E402
from wfvae.evaluation import metrics as M  # noqa: E402
from wfvae.formats import is_video_path  # noqa: E402
from wfvae.inference.common import load_for_inference  # noqa: E402
from wfvae.models import build_model  # noqa: E402

CLIP_PHOTOS = (*VAL_PHOTOS, *sorted(PHOTOS))


def round_trip(model, video: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z = model.encode(video).mode()
        return model.decode(z).float().clamp(-1, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="model config.json (random weights)")
    src.add_argument("--ckpt", help="trained model folder or weights file")
    p.add_argument("--num_frames", type=int, default=17)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--video_dir", default=None, help="take the clips from the video files in this folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON file for the rows and the machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config:
        torch.manual_seed(0)
        model = build_model(args.config).eval().set_conv_kernels("auto")
    else:
        model = load_for_inference(args.ckpt, "auto", device=torch.device("cpu"))
    info = machine_info(torch.get_num_threads())
    if args.video_dir and not Path(args.video_dir).is_dir():
        p.error(f"--video_dir {args.video_dir} is not a folder")
    files = sorted(f for f in Path(args.video_dir).iterdir() if is_video_path(f)) if args.video_dir else []
    if args.video_dir and not files:
        p.error(f"--video_dir {args.video_dir} holds no video files")
    rows = []
    for i in range(args.clips):
        if files:
            path = files[i % len(files)]
            first_frame = (i // len(files)) * 2 * args.num_frames
            try:
                frames = read_video(path, start=first_frame, num_frames=args.num_frames)
            except VideoDecodeError as e:  # unreadable, or fewer than --num_frames frames from first_frame
                p.error(str(e))
            video = to_model_tensor(resize_crop(frames, args.resolution, args.resolution, args.resolution))[None]
            row = {"clip": i, "video": path.name, "start_frame": first_frame}
        else:
            photo = load_photo(CLIP_PHOTOS[i % len(CLIP_PHOTOS)])
            frames, _ = make_demo_clip(photo, MOTIONS[i % len(MOTIONS)], num_frames=args.num_frames,
                                       size=args.resolution, seed=i)
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, T, H, W)
            row = {"clip": i, "photo": CLIP_PHOTOS[i % len(CLIP_PHOTOS)]}
        outs = {}
        for name, bf16 in (("fp32", False), ("bf16", True)) if i % 2 == 0 else (("bf16", True), ("fp32", False)):
            round_trip(model, video, bf16)  # warm-up: kernel choice, oneDNN primitive caches
            start = time.perf_counter()
            outs[name] = round_trip(model, video, bf16)
            row[f"{name}_s"] = time.perf_counter() - start
            row[f"{name}_psnr"] = float(M.psnr(video, outs[name])[0])
            row[f"{name}_ssim"] = float(M.ssim(video, outs[name])[0])
        row["bf16_vs_fp32_psnr"] = float(M.psnr(outs["fp32"], outs["bf16"])[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    summary = {"fp32_s": mean("fp32_s"), "bf16_s": mean("bf16_s"), "speedup": mean("fp32_s") / mean("bf16_s"),
               "psnr_cost_db": mean("fp32_psnr") - mean("bf16_psnr"), "ssim_cost": mean("fp32_ssim") - mean("bf16_ssim"),
               "bf16_vs_fp32_psnr": mean("bf16_vs_fp32_psnr")}
    info["loadavg_end"] = os.getloadavg()
    result = {"machine": info, "args": vars(args), "rows": rows, "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
