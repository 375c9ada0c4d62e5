"""A teacher's inference throughput (images/s), the number that sizes a teacher-output cache.

Builds the architecture untrained (throughput does not depend on the weights), runs batches of
random images in inference mode and reports the median of several timed rounds, per precision.

    python benchmarks/teacher_throughput.py --arch torchvision:resnet50 --size 224 --batch 32 \\
        --precision fp32 bf16 --out benchmarks/results/teacher_throughput_resnet50.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import provenance, publish

from kdistill.hardware import choose_threads
from kdistill.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="torchvision:resnet50")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=3, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    threads = choose_threads(args.threads)
    torch.set_num_threads(threads.threads)
    device = torch.device(args.device)
    model = build_model(args.arch, args.classes, (3, args.size, args.size)).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    report = {**provenance("teacher_throughput.py"), "threads": threads.describe(), "results": {}}
    for precision in args.precision:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        rates = []
        with torch.inference_mode(), autocast:
            model(x)  # warm-up
            for _ in range(args.rounds):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(args.batches):
                    model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates.append(args.batch * args.batches / (time.perf_counter() - started))
        report["results"][precision] = {"images_per_s": rates, "median": statistics.median(rates)}
    publish(report, args.out)


if __name__ == "__main__":
    main()
