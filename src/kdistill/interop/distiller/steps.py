"""What a schedule's sections read (a policy's epochs) and write (the translated schedule)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdistill.interop.distiller.errors import Translation
from kdistill.validation import EpochWindow


@dataclass(frozen=True)
class Steps:
    """A policy's epochs as Distiller schedules them: ``start, start + f, ... < end``."""

    window: EpochWindow
    frequency: int

    @property
    def start(self) -> int:
        return self.window.start

    @property
    def end(self) -> int:
        assert self.window.end is not None  # a Distiller policy always has an end
        return self.window.end

    @property
    def epochs(self) -> list[int]:
        return list(range(self.start, self.end, self.frequency))


@dataclass
class Schedule:
    """What the sections build: typed policies, thinning epochs, the lr schedule, notes."""

    where: str
    epochs: int
    out: Translation
    policies: list[Any] = field(default_factory=list)
    thinning: dict[str, list[int]] = field(default_factory=dict)  # structure -> epochs
    lr: dict[str, Any] | None = None

    def note(self, text: str) -> None:
        self.out.notes.append(text)

    def end_in_run(self, end: int) -> int | None:
        """kdistill's ending_epoch (null = the end) for Distiller's, which may pass the run."""
        return None if end >= self.epochs else end
