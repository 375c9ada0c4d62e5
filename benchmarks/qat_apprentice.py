"""The seed's headline, measured: a low-bit ResNet taught by its own FP32 version (Mishra and
Marr's Apprentice, scheme C) against the same quantization-aware training without a teacher.

On a prefix of Fashion-MNIST's training split (the whole test split is kept), the script trains
the FP32 teacher with the shipped ``fashion-mnist/resnet20-teacher`` recipe, then, for each
weight width (8-bit activations, first conv and fc at 8 bits) and seed, runs the shipped
``fashion-mnist/resnet20-w4a8-qat`` (QAT alone) and ``fashion-mnist/resnet20-w4a8-distill``
(QAT with distillation from the frozen FP32 teacher, its outputs cached), both starting from the
teacher's weights with the same budget. Each run converts its student to an int8 ONNX model and
evaluates it with onnxruntime beside the fake-quantized PyTorch model. With ``--resnet18`` it
does the same once for the ResNet-18 recipes (``fashion-mnist/resnet18-teacher`` and
``fashion-mnist/resnet18-w4a8-distill``, with and without its distillation policy).

    python benchmarks/qat_apprentice.py --train-samples 12000 --seeds 0,1,2 --bits 4 2 \
        --work runs/apprentice --out benchmarks/results/qat_apprentice.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import struct
import subprocess
import sys
from pathlib import Path

from common import provenance, publish

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_prefix(source: Path, out: Path, train_samples: int) -> Path:
    """Fashion-MNIST's IDX files with the training split cut to its first ``train_samples``."""
    out.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", train_samples), ("t10k", None)):
        for kind, offset in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            raw = gzip.decompress((source / f"{split}-{kind}.gz").read_bytes())
            header = bytearray(raw[:offset])
            items = struct.unpack(">I", header[4:8])[0]
            keep = items if limit is None else min(limit, items)
            per_item = (len(raw) - offset) // items
            header[4:8] = struct.pack(">I", keep)
            body = raw[offset : offset + keep * per_item]
            (out / f"{split}-{kind}.gz").write_bytes(gzip.compress(bytes(header) + body, 1))
    return out


def kdistill(*args: str) -> None:
    cmd = [sys.executable, "-m", "kdistill.cli.main", *args, "-q"]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def seed_dirs(work: Path, name: str) -> list[Path]:
    (run,) = [p for p in work.glob(f"{name}-*") if p.is_dir() and not p.is_symlink()]
    return sorted(p for p in run.glob("seed-*") if (p / "summary.json").is_file())


def finished(work: Path, name: str) -> bool:
    runs = [p for p in work.glob(f"{name}-*") if p.is_dir() and not p.is_symlink()]
    return bool(runs) and bool(seed_dirs(work, name))


def results(work: Path, name: str) -> list[dict]:
    rows = []
    for seed_dir in seed_dirs(work, name):
        summary = json.loads((seed_dir / "summary.json").read_text())
        q = summary["compression"]["quantization"]
        rows.append({
            "seed": int(seed_dir.name.split("-")[1]),
            "fake_quant_test_top1": q["fake_quant_test_top1"],
            "int8_test_top1": q["int8_test_top1"],
            "total_s": summary.get("total_time_s"),
            "run_dir": str(seed_dir),
        })  # fmt: skip
    return rows


def stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=12000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--resnet18", action="store_true", help="also the ResNet-18 version")
    parser.add_argument("--work", default="runs/apprentice")
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(args.work)
    data = write_prefix(FASHION_MNIST, work / "fashion-mnist-prefix", args.train_samples)
    common = [f"data.root={data}", f"--out={work}"]
    report = {**provenance("qat_apprentice.py"), "train_samples": args.train_samples, "rows": []}

    def family(arch: str, teacher_recipe: str, recipes: dict[str, list[str]], bits: list[int],
               seeds: str) -> None:  # fmt: skip
        teacher_name = f"apprentice-{arch}-teacher"
        if not finished(work, teacher_name):
            kdistill("train", teacher_recipe, *common, f"--name={teacher_name}")
        (teacher,) = seed_dirs(work, teacher_name)
        report[f"{arch}_teacher_test_top1"] = json.loads((teacher / "summary.json").read_text())[
            "test_top1"
        ]
        for b in bits:
            for mode, (recipe, extra) in recipes.items():
                name = f"apprentice-{arch}-w{b}a8-{mode}"
                quant = "policies.1" if mode == "distill" else "policies.0"
                if not finished(work, name):  # a finished run is reused (the script resumes)
                    kdistill(
                        "train", recipe, *common, *extra, f"model.checkpoint={teacher}",
                        f"{quant}.weight_bits={b}", f"--name={name}", f"--seeds={seeds}",
                        *([f"kd.teachers.0.checkpoint={teacher}"] if mode == "distill" else []),
                    )  # fmt: skip
                rows = results(work, name)
                report["rows"].append({
                    "arch": arch, "weight_bits": b, "activation_bits": 8, "mode": mode,
                    "fake_quant_test_top1": stats([r["fake_quant_test_top1"] for r in rows]),
                    "int8_test_top1": stats([r["int8_test_top1"] for r in rows]),
                    "max_int8_gap": max(
                        abs(r["int8_test_top1"] - r["fake_quant_test_top1"]) for r in rows
                    ),
                    "seeds": rows,
                })  # fmt: skip
                publish(report, args.out)

    family(
        "resnet20", "fashion-mnist/resnet20-teacher",
        {"qat": ("fashion-mnist/resnet20-w4a8-qat", []),
         "distill": ("fashion-mnist/resnet20-w4a8-distill", [])},
        args.bits, args.seeds,
    )  # fmt: skip
    if args.resnet18:
        no_kd = (
            "policies=[{kind: quantization, starting_epoch: 0, weight_bits: 4, "
            "activation_bits: 8, overrides: {conv1: {weight_bits: 8}, fc: {weight_bits: 8}}}]"
        )
        family(
            "resnet18", "fashion-mnist/resnet18-teacher",
            {"qat": ("fashion-mnist/resnet18-w4a8-distill", [no_kd, "kd=null"]),
             "distill": ("fashion-mnist/resnet18-w4a8-distill", [])},
            [4], args.seeds.split(",")[0],
        )  # fmt: skip
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
