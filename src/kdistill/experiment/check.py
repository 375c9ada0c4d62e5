"""``check_run``: resolve everything a run of a config names, without training it.

What ``kdistill distiller --dry-run`` (and anyone about to start a long run) wants to know
before spending hours: the data loads, the student builds for it, every teacher file exists,
loads and fits the data, and every layer a compression policy names is in the student. Each
check is the one the run itself makes, so the error is the run's error.
"""

from __future__ import annotations

from collections.abc import Callable

from kdistill.compression.callbacks import build_callbacks, check_layers
from kdistill.config.schema import RunConfig
from kdistill.data import build_data
from kdistill.experiment.assembly import build_student, code_trust
from kdistill.experiment.teachers import load_teachers

Log = Callable[[str], None]


def check_run(cfg: RunConfig, *, trust_code: bool = False, log: Log = print) -> list[str]:
    """Resolve the data, the student, the teachers and the policies' layer names of ``cfg``;
    returns what was checked (one line each). Raises what the run would raise."""
    trust = code_trust(cfg, trust_code)
    data = build_data(cfg.data)
    checked = [f"data: {data.name}, {len(data.train)} training samples of {data.input_shape}"]
    student, spec = build_student(cfg, data, trust)
    params = sum(p.numel() for p in student.parameters())
    checked.append(f"student: {spec.arch} ({params:,} parameters)")
    if cfg.kd is not None:
        for i, teacher in enumerate(load_teachers(cfg.kd, data, cfg.data, log, trust)):
            checked.append(f"kd.teachers[{i}]: {teacher.spec.arch} from {teacher.reference}")
    callbacks = build_callbacks(
        cfg.policies, epochs=cfg.train.epochs, input_shape=data.input_shape, log=log
    )
    check_layers(callbacks, student)
    if cfg.policies:
        checked.append(
            f"policies: {', '.join(p.kind for p in cfg.policies)} (every layer name resolves)"
        )
    return checked
