"""What ``kd.teacher_precision: auto`` chooses on this machine, for teachers of several sizes.

For each (architecture, input shape) the script builds the teacher untrained (speed does not
depend on the weights), wraps it as a frozen teacher, and asks kdistill's own rule
(:func:`kdistill.experiment.precision.choose_teacher_precision` with its forward-pass probe)
what to run it in, several times, so that the stability of the choice shows. With
``--no-native`` it answers as on a CPU without bf16 units (no probe is run there).

    python benchmarks/precision_auto.py --repeats 5 --out benchmarks/results/precision_auto.json
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from common import provenance, publish

from kdistill.experiment.precision import choose_teacher_precision, forward_probe
from kdistill.hardware import choose_threads
from kdistill.models import build_model
from kdistill.teachers import FrozenTeacher

TEACHERS = [
    ("lenet5", (1, 8, 8), 10),  # the digits demo's teacher
    ("resnet20_cifar", (1, 28, 28), 10),  # the Fashion-MNIST benchmark's teacher
    ("torchvision:resnet18", (3, 64, 64), 100),
    ("torchvision:resnet50", (3, 224, 224), 1000),
]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=5, help="choices made per teacher")
    p.add_argument("--no-native", action="store_true", help="answer as without bf16 units")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    threads = choose_threads(args.threads)
    torch.set_num_threads(threads.threads)
    cpu = torch.device("cpu")
    report = {**provenance("precision_auto.py"), "threads": threads.describe(), "teachers": []}
    for arch, shape, classes in TEACHERS:
        member = FrozenTeacher(build_model(arch, classes, shape))
        probe = forward_probe([member], shape, cpu)
        native = None if args.no_native else True
        choices = [
            choose_teacher_precision("auto", cpu, probe, native=native) for _ in range(args.repeats)
        ]
        report["teachers"].append(
            {
                "arch": arch,
                "input_shape": list(shape),
                "chosen": dict(Counter(c.precision for c in choices)),
                "reasons": [c.reason for c in choices],
            }
        )
    publish(report, args.out)


if __name__ == "__main__":
    main()
