"""``kdistill export``: a trained student as standalone ONNX / torch.export files."""

from __future__ import annotations

import argparse

from kdistill.cli.commands import add_threads_flag, add_trust_code_flag, use_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model as ONNX (FP32 or int8) and torch.export, normalization inside",
        description=(
            "Writes model.onnx / model.pt2 (FP32), or model.int8.onnx / model.int8.pt2 for a "
            "quantization-aware run or with --int8 ptq. Each file takes raw samples (pixels in "
            "[0, 1], float32), its normalization folded in, and is checked on the test split "
            "against the PyTorch model (export.json)."
        ),
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help="finished run directory or model file")
    p.add_argument("--out", help="output directory (default: <run>/export)")
    p.add_argument(
        "--format",
        default="onnx,pt2",
        help="comma-separated: onnx, pt2 (torch.export archive); default both",
    )
    p.add_argument(
        "--int8",
        choices=("auto", "ptq", "none"),
        default="auto",
        help="auto: int8 for quantization-aware runs; ptq: also post-training int8 of an FP32 "
        "model; none: FP32 only",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=512,
        help="training samples that calibrate post-training quantization",
    )
    add_trust_code_flag(p)
    add_threads_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    use_threads(args)
    from pathlib import Path

    from kdistill.experiment.export import export_model
    from kdistill.trust import CodeTrust

    source = Path(args.model)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "export"
    export_model(
        source,
        out,
        formats=[f.strip() for f in args.format.split(",") if f.strip()],
        int8=args.int8,
        calibration_samples=args.calibration_samples,
        trust=CodeTrust(everything=args.trust_code),
    )
    print(f"written to {out} (export.json lists each file and its check)")
    return 0
