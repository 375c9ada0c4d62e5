"""``kdistill distiller ARGS...``: a Distiller ``compress_classifier.py`` command line, run as
Distiller would run it (its defaults, its ``--compress`` schedule), printed as the equivalent
kdistill config so users can move to the native form."""

from __future__ import annotations

import argparse
from typing import Any

from kdistill.cli.commands import UserError, add_threads_flag

D = "Distiller default"
# Flags that change nothing kdistill computes: accepted, each with one line saying so.
IGNORED = {
    "verbose": "kdistill's log is always complete",
    "activation_stats": "activation statistics are not collected",
    "activation_histograms": "activation histograms are not collected",
    "masks_sparsity": "the run record holds each pruned layer's sparsity",
    "param_hist": "parameter histograms: TensorBoard's event files hold the run's scalars",
    "summary": "kdistill models CONFIG and kdistill layers CONFIG describe the model",
    "confusion": "the run record holds per-class accuracy",
    "num_best_scores": "the run record keeps the best validation score",
    "export_onnx": "a quantized run writes its int8 ONNX model; kdistill export writes others",
    "reset_optimizer": "kdistill starts a fresh optimizer from --resume-from's weights anyway",
    "load_serialized": "kdistill runs one device per process (no DataParallel to serialize)",
}
# Flags whose work kdistill does not do: an error says what to use instead.
REFUSED = {
    "evaluate": "evaluate a model with kdistill eval FILE (a model file or run directory)",
    "sense": "sensitivity analysis is not implemented; sweep pruning levels with kdistill sweep",
    "quantize_eval": "post-training quantization is not implemented; train with a "
    "QuantAwareTrainRangeLinearQuantizer schedule (--compress) instead",
    "thinnify": "thinning runs inside training: add a FilterRemover / ChannelRemover extension to "
    "the --compress schedule",
    "greedy": "greedy filter pruning is not implemented",
    "earlyexit_thresholds": "early-exit networks are not implemented",
}
_SUBSAMPLING = ("effective_train_size", "effective_valid_size", "effective_test_size")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distiller",
        help="run a Distiller compress_classifier.py command line (and its --compress schedule)",
        description=(
            "Run a Distiller compress_classifier.py command line unchanged: its flags mean what "
            "they mean in Distiller, with Distiller's defaults (T=1, --kd-dw 0.5, --kd-sw 0.5, "
            "lr 0.1, 90 epochs, batch 256), and --compress reads Distiller's YAML schedule. The "
            "equivalent kdistill config is printed first (--write-config saves it), e.g.\n"
            "  kdistill distiller data/cifar10 -a resnet20_cifar --lr 0.1 --epochs 180 -b 128 \\\n"
            "      --kd-teacher resnet110_cifar --kd-resume teacher.pth.tar --kd-temp 5 \\\n"
            "      --kd-dw 0.7 --kd-sw 0.3 --compress agp.yaml\n"
            "docs/distiller.md maps every flag and schedule class."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "data", metavar="DATASET_DIR",
        help="CIFAR-10/100 python batches, MNIST IDX files, an ImageNet-style folder with train/ "
        "and val/ (the dataset is inferred from it, checked against the architecture); or "
        "digits / fashion-mnist",
    )  # fmt: skip
    g = p.add_argument_group("Distiller's flags (its defaults)")
    g.add_argument("--arch", "-a", metavar="ARCH", help=f"student model [{D}: resnet18]")
    g.add_argument("-j", "--workers", type=int, metavar="N", help="ignored (data loader workers)")
    g.add_argument("--epochs", type=int, metavar="N", help=f"[{D}: 90]")
    # Distiller's argparse takes unique prefixes; its examples write --batch and --gpu
    g.add_argument(
        "-b", "--batch-size", "--batch", type=int, metavar="N", dest="batch_size",
        help=f"[{D}: 256]",
    )  # fmt: skip
    g.add_argument("--lr", "--learning-rate", type=float, metavar="LR", help=f"[{D}: 0.1]")
    g.add_argument("--momentum", type=float, metavar="M", help=f"[{D}: 0.9]")
    g.add_argument(
        "--weight-decay", "--wd", type=float, metavar="W", dest="weight_decay",
        help=f"[{D}: 1e-4]",
    )  # fmt: skip
    g.add_argument(
        "--print-freq", "-p", type=int, metavar="N", help="ignored (kdistill reports per epoch)"
    )
    g.add_argument(
        "--validation-split", "--valid-size", "--vs", type=float, dest="validation_split",
        metavar="F", help=f"fraction of the training set held out for validation [{D}: 0.1]",
    )  # fmt: skip
    g.add_argument(
        "--gpus", "--gpu", metavar="DEV_ID", dest="gpus",
        help="device id(s), e.g. 0 or 0,1 (the first is used; the CPU, with a note, where "
        "there is no CUDA GPU, as Distiller does)",
    )  # fmt: skip
    g.add_argument("--cpu", action="store_true", default=None, help="run on the CPU")
    g.add_argument("--deterministic", "--det", action="store_true", default=None)
    g.add_argument("--seed", type=int, help=f"[{D}: random; kdistill: 0]")
    g.add_argument("--out-dir", "-o", dest="out_dir", metavar="DIR", help=f"[{D}: logs]")
    g.add_argument("--name", "-n", metavar="NAME", help="experiment name [distiller-ARCH]")
    g.add_argument("--resume-from", metavar="CHECKPOINT", help="start from these weights")
    g.add_argument("--exp-load-weights-from", metavar="CHECKPOINT", help="start from these weights")
    g.add_argument("--pretrained", action="store_true", default=None, help="refused (downloads)")
    g.add_argument("--compress", metavar="SCHEDULE", help="Distiller YAML compression schedule")
    kd = p.add_argument_group("Distiller's knowledge distillation flags (its defaults)")
    kd.add_argument("--kd-teacher", metavar="ARCH", help="teacher model; turns distillation on")
    kd.add_argument("--kd-pretrained", action="store_true", default=None,
                    help="needs --kd-resume here: kdistill never downloads")  # fmt: skip
    kd.add_argument("--kd-resume", metavar="PATH", help="the teacher's weights")
    kd.add_argument("--kd-temperature", "--kd-temp", dest="kd_temperature", type=float,
                    metavar="T", help=f"[{D}: 1.0; kdistill train: 4]")  # fmt: skip
    kd.add_argument("--kd-distill-wt", "--kd-dw", dest="kd_distill_wt", type=float, metavar="W",
                    help=f"distillation loss weight [{D}: 0.5; kdistill train: 1 - alpha]")  # fmt: skip
    kd.add_argument("--kd-student-wt", "--kd-sw", dest="kd_student_wt", type=float, metavar="W",
                    help=f"student loss weight [{D}: 0.5; kdistill train: 0.1]")  # fmt: skip
    kd.add_argument("--kd-teacher-wt", "--kd-tw", dest="kd_teacher_wt", type=float, metavar="W",
                    help=f"teacher loss weight, trains it jointly [{D}: 0]")  # fmt: skip
    kd.add_argument("--kd-start-epoch", type=int, metavar="E", help=f"[{D}: 0]")
    ign = p.add_argument_group("Distiller flags accepted and ignored (one line says so)")
    for flags, dest, kw in (
        (("--verbose", "-v"), "verbose", {"action": "store_true", "default": None}),
        (("--activation-stats", "--act-stats"), "activation_stats", {"nargs": "+"}),
        (("--activation-histograms", "--act-hist"), "activation_histograms", {"nargs": "+"}),
        (("--masks-sparsity",), "masks_sparsity", {"action": "store_true", "default": None}),
        (("--param-hist",), "param_hist", {"action": "store_true", "default": None}),
        (("--summary",), "summary", {"action": "append"}),
        (("--confusion",), "confusion", {"action": "store_true", "default": None}),
        (("--num-best-scores",), "num_best_scores", {"type": int}),
        (("--export-onnx",), "export_onnx", {"nargs": "?", "const": "model.onnx"}),
        (("--reset-optimizer",), "reset_optimizer", {"action": "store_true", "default": None}),
        (("--load-serialized",), "load_serialized", {"action": "store_true", "default": None}),
    ):
        ign.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, **kw)
    ref = p.add_argument_group("Distiller flags refused with what to use instead")
    for flags, dest, kw in (
        (("--evaluate", "-e"), "evaluate", {"action": "store_true", "default": None}),
        (("--sense",), "sense", {}),
        (("--quantize-eval", "--qe"), "quantize_eval", {"action": "store_true", "default": None}),
        (("--thinnify",), "thinnify", {"action": "store_true", "default": None}),
        (("--greedy",), "greedy", {"action": "store_true", "default": None}),
        (("--earlyexit_thresholds",), "earlyexit_thresholds", {"nargs": "*"}),
        (("--effective-train-size", "--etrs"), "effective_train_size", {"type": float}),
        (("--effective-valid-size", "--evs"), "effective_valid_size", {"type": float}),
        (("--effective-test-size", "--etes"), "effective_test_size", {"type": float}),
    ):
        ref.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, **kw)
    own = p.add_argument_group("kdistill's own")
    own.add_argument("--write-config", metavar="FILE",
                     help="also write the equivalent kdistill config to FILE (YAML)")  # fmt: skip
    own.add_argument("--dry-run", action="store_true",
                     help="print the equivalent config, resolve everything the run names (data, "
                     "models, teacher files, layer names) and stop: nothing is trained")  # fmt: skip
    own.add_argument(
        "--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
        help="continue this kdistill run if it was interrupted; --resume=CHECKPOINT is "
        "Distiller's deprecated spelling of --resume-from CHECKPOINT",
    )  # fmt: skip
    own.add_argument(
        "--on-collapse", choices=("stop", "warn", "ignore"), dest="on_collapse",
        help="what a collapse (a student predicting one class, or at chance) does: stop the "
        "run (kdistill's default, also for translated runs), warn, or ignore it "
        "[train.on_collapse]",
    )  # fmt: skip
    own.add_argument("--force", action="store_true", help="start this run over")
    own.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    own.add_argument("--trust-code", action="store_true",
                     help="let model files name import-path architectures")  # fmt: skip
    add_threads_flag(own)
    p.set_defaults(
        handler=handle,
        unknown_hint=(
            "; kdistill distiller accepts compress_classifier.py's flags for distillation, "
            "pruning and quantization-aware training (kdistill distiller --help, docs/distiller.md)"
        ),
    )


def translate(args: argparse.Namespace) -> Any:
    """The :class:`~kdistill.interop.distiller.Translation` of the parsed flags."""
    from kdistill.interop.distiller import DistillerError, translate_flags

    for dest, what in REFUSED.items():
        if getattr(args, dest) not in (None, False, []):
            raise DistillerError(f"--{dest.replace('_', '-')}: {what}")
    for dest in _SUBSAMPLING:
        value = getattr(args, dest)
        if value is not None and value != 1.0:
            raise DistillerError(
                f"--{dest.replace('_', '-')} {value}: kdistill trains and evaluates on whole "
                "splits; make a smaller dataset (an image folder or .npz) to subsample"
            )
    if isinstance(args.resume, str):  # Distiller's --resume=PATH
        if args.resume_from:
            raise DistillerError(
                f"--resume={args.resume} and --resume-from {args.resume_from}: give one (in "
                "Distiller --resume is the deprecated spelling of --resume-from)"
            )
        args.resume_from, args.resume = args.resume, False
        resumed_note = (
            f"--resume={args.resume_from}: Distiller's deprecated spelling of --resume-from "
            "(kdistill's own --resume, without a value, continues an interrupted kdistill run)"
        )
    else:
        resumed_note = None
    values = {k: v for k, v in vars(args).items() if k not in IGNORED}
    result = translate_flags(values, args.compress)
    if resumed_note:
        result.notes.insert(0, resumed_note)
    if args.on_collapse is not None:
        result.config.setdefault("train", {})["on_collapse"] = args.on_collapse
    device = result.config.get("train", {}).get("device", "auto")
    if device.startswith("cuda") and not _cuda_available():
        result.config["train"]["device"] = "cpu"
        result.notes.append(
            f"--gpus {args.gpus}: this machine has no CUDA GPU; the run uses the CPU (as "
            "Distiller does)"
        )
    for dest, why in IGNORED.items():
        if getattr(args, dest) not in (None, False, []):
            result.notes.append(f"--{dest.replace('_', '-')} ignored: {why}")
    return result


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def handle(args: argparse.Namespace) -> int:
    import yaml

    from kdistill.config import from_dict
    from kdistill.config.schema import RunConfig
    from kdistill.files import atomic_write_text

    translation = translate(args)
    for note in translation.notes:
        print(f"note: {note}")

    class Plain(yaml.SafeDumper):  # kdistill configs refuse aliases: write values out
        def ignore_aliases(self, data: Any) -> bool:
            return True

    text = yaml.dump(translation.config, Dumper=Plain, sort_keys=False, default_flow_style=None)
    cfg = from_dict(RunConfig, translation.config)  # validated before anything is written
    print("the equivalent kdistill config (kdistill train FILE runs it):")
    print("  " + text.rstrip().replace("\n", "\n  "))
    if args.write_config:
        _check_config_target(args)
        header = (
            "# kdistill config translated from a Distiller command line by kdistill distiller\n"
        )
        try:
            atomic_write_text(args.write_config, header + text)
        except OSError as e:
            raise UserError(f"--write-config {args.write_config}: cannot write it ({e})") from None
        print(f"written to {args.write_config}: kdistill train {args.write_config}")
    if args.dry_run:
        from kdistill.experiment.check import check_run

        print("resolving what the run names (nothing is trained):")
        for line in check_run(cfg, trust_code=args.trust_code, log=lambda m: print(f"  {m}")):
            print(f"  {line}")
        return 0
    from kdistill.experiment import run
    from kdistill.experiment.finish import describe_record

    result = run(
        cfg,
        resume=args.resume,
        force=args.force,
        progress=not args.quiet,
        log=print,
        trust_code=args.trust_code,
        threads=args.threads,
    )
    if result.record is not None:
        print(describe_record(result.record))
    return 0


def _check_config_target(args: argparse.Namespace) -> None:
    """``--write-config`` never writes over one of the command's own input files (the schedule,
    the checkpoints), nor over any existing file without ``--force``."""
    from pathlib import Path

    target = Path(args.write_config)
    inputs = {
        flag: getattr(args, dest, None)
        for flag, dest in (("--compress", "compress"), ("--kd-resume", "kd_resume"),
                           ("--resume-from", "resume_from"),
                           ("--exp-load-weights-from", "exp_load_weights_from"))
    }  # fmt: skip
    if target.exists():
        for flag, value in inputs.items():
            if value and Path(value).exists() and Path(value).resolve() == target.resolve():
                raise UserError(
                    f"--write-config {target} is the {flag} file this command reads: give "
                    "another file name for the kdistill config"
                )
        if not args.force:
            raise UserError(
                f"--write-config {target} exists: pass --force to replace it, or give a new file"
            )
