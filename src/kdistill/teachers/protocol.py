"""The ``Teacher`` role: anything that turns a batch of inputs into a ``TeacherOutput``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from kdistill.types import TeacherOutput


@runtime_checkable
class Teacher(Protocol):
    """A source of soft targets.

    Implementations (:class:`FrozenTeacher`, :class:`EnsembleTeacher`, the cached teacher)
    compose rather than inherit. ``sample_ids`` and ``views`` identify each input (its dataset
    index and augmentation view) for teachers that look outputs up instead of computing them;
    live teachers ignore them. ``is_teacher = True`` marks such objects, so that a plain
    network handed to kdistill can be told apart and frozen.
    """

    is_teacher: bool

    def __call__(
        self,
        inputs: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> TeacherOutput: ...
