"""``kdistill methods`` and ``kdistill layers``: the distillation methods, and the layers a
config's student and teacher offer to feature methods."""

from __future__ import annotations

import argparse

from kdistill.cli.commands import (
    add_threads_flag,
    add_trust_code_flag,
    split_config_and_overrides,
    use_threads,
)


def register_methods(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "methods", help="list the distillation methods: paper, default weight, what each needs"
    )
    p.set_defaults(handler=handle_methods)


def handle_methods(args: argparse.Namespace) -> int:
    from kdistill.methods import METHODS

    for m in METHODS.values():
        needs = (
            f"layer pairs ({m.pairs}); teacher runs online"
            if m.needs_features
            else "logits; reads the teacher-output cache"
        )
        weight = m.source if m.weight is None else f"{m.weight:g} ({m.source})"
        print(f"{m.name:7s} {m.title} - {m.paper}")
        print(f"        weight {weight}; needs {needs}")
        for key, value in m.args.items():
            print(f"        args.{key} = {value!r}: {m.arg_docs.get(key, '')}")
    print(
        "\nUse: kd.methods: [{name: kd}, {name: at, pairs: [{student: layer2, teacher: layer2}]}]; "
        "kd.alpha weighs the labels' cross-entropy. docs/methods.md has the equations."
    )
    return 0


def register_layers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "layers",
        help="list the student's and teacher's layers with their output shapes (for kd.features)",
    )
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="config and overrides")
    add_trust_code_flag(p)
    add_threads_flag(p)
    p.set_defaults(handler=handle_layers)


def handle_layers(args: argparse.Namespace) -> int:
    use_threads(args)

    from kdistill.config import load_config
    from kdistill.data import build_data, first_input
    from kdistill.experiment.assembly import build_student, code_trust
    from kdistill.experiment.teachers import build_teacher
    from kdistill.objectives.taps import module_shapes
    from kdistill.teachers.frozen import FrozenTeacher

    config, overrides = split_config_and_overrides(args.items)
    cfg = load_config(config, overrides)
    trust = code_trust(cfg, args.trust_code)
    data = build_data(cfg.data)
    sample = first_input(data.train)
    student, spec = build_student(cfg, data, trust)
    networks = [(f"student ({spec.arch})", student, sample)]
    if cfg.kd is not None:
        teacher = build_teacher(cfg, data, lambda _: None, trust)
        for i, member in enumerate(teacher.members):
            assert isinstance(member, FrozenTeacher)
            x = member.input_transform(sample) if member.input_transform is not None else sample
            networks.append((f"teacher {i}", member.model, x))
    for title, model, x in networks:
        print(f"{title}: layer, output shape for one sample")
        for name, shape in module_shapes(model, x):
            print(f"  {name:32s} {list(shape)}")
    return 0
