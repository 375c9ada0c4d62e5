"""``RunOptions``: how a run is carried out, as opposed to what it computes (its config)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kdistill.engine.trainer import Callback
from kdistill.hardware import ThreadChoice

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    """The settings of a run that are not part of its config (nor of its identity).

    Attributes:
        resume: continue from the newest checkpoint (or start, saying so, when there is none).
        force: move an existing run of this config aside and start over.
        progress: show progress bars.
        log: where messages go.
        callbacks: extra trainer callbacks.
        trust_code: model files (teachers, ``model.checkpoint``) may name import-path
            architectures that the config does not write itself (see :mod:`kdistill.trust`).
        link: point ``<out_dir>/<name>`` at the run when it finishes (the CLI does so only for
            a recipe run as written).
        threads: CPU threads (``--threads``): they change how fast a run goes, not what it
            computes. ``None`` = ``train.threads``, else chosen from the machine's cores and
            load (the choice is logged and kept in the run record).
    """

    resume: bool = False
    force: bool = False
    progress: bool = True
    log: Log = print
    callbacks: Sequence[Callback] = ()
    trust_code: bool = False
    link: bool = True
    threads: int | ThreadChoice | None = None

    @classmethod
    def of(cls, options: RunOptions | None = None, **settings: Any) -> RunOptions:
        """``options`` (or the defaults) with ``settings`` given as keywords; an unknown
        keyword is an error naming the valid ones."""
        base = options if options is not None else cls()
        try:
            return replace(base, **settings)
        except TypeError:
            valid = ", ".join(f for f in cls.__dataclass_fields__)
            unknown = ", ".join(sorted(set(settings) - set(cls.__dataclass_fields__)))
            raise TypeError(f"unknown run option(s) {unknown}; valid: {valid}") from None
