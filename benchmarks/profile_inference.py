"""Where the time goes: torch.profiler operator table for a round trip, ours and the original.

How to run::

    python benchmarks/profile_inference.py --frames 9 --size 64
    python benchmarks/profile_inference.py --frames 9 --size 128 --reference_repo /path/to/WF-VAE

Prints the top operators by self CPU time (one warm-up pass, then one profiled pass) for each
implementation on the same weights and input, under ``torch.inference_mode()``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from wfvae.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples/configs/wfvae-large-16chn.json"))
    p.add_argument("--reference_repo", default=None)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--conv", default="direct", choices=["auto", "direct", "winograd"], help="our 3x3 convolutions")
    p.add_argument("--record_shapes", action="store_true", help="also print the table grouped by input shape")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = json.loads(Path(args.config).read_text())
    torch.manual_seed(0)
    ours = build_model(config).eval()
    reference_state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    ours.use_channels_last_weights()  # as the reconstruct / encode / decode commands run it
    ours.set_conv_kernels(args.conv)
    runs = {"ours": lambda x: ours.decode(ours.encode(x).mode())}
    if args.reference_repo:
        sys.path.insert(0, args.reference_repo)  # the original is imported only for this comparison
        from causalvideovae.model.vae.modeling_wfvae import WFVAEModel

        reference = WFVAEModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
        reference.load_state_dict(reference_state, strict=True)
        runs["reference"] = lambda x: reference.decode(reference.encode(x).latent_dist.mode()).sample
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, args.frames, args.size, args.size, generator=g) * 2 - 1
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode():
        for name, run in runs.items():
            run(video)
            with profile(activities=activities, record_shapes=args.record_shapes) as prof:
                run(video)
            print(f"== {name}: {args.frames}x{args.size}x{args.size}, {args.threads} threads")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
            if args.record_shapes:
                print(prof.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=args.rows, max_shapes_column_width=90))
    return 0


if __name__ == "__main__":
    sys.exit(main())
