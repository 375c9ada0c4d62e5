"""What a translation produces, and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdistill.config.errors import ConfigError


class DistillerError(ConfigError):
    """A Distiller flag, schedule entry or value that kdistill cannot run as Distiller would."""


@dataclass
class Translation:
    """A kdistill config (only the keys that differ from kdistill's defaults) and notes."""

    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
