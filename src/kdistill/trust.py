"""Which code kdistill may import: only what the user wrote in this invocation.

An architecture given as an import path (``package.module:builder``) is code: importing the
module and calling the builder runs whatever they contain. kdistill imports such a path when
the user wrote it in their own config or command line, and never because a file said so: a
model file, run directory or cache made by someone else names an import path only as data,
and loading it stops with :class:`UntrustedCodeError` unless the user gives the same path
themselves or passes ``--trust-code`` (``trust_code=True`` in Python).

This module imports nothing of kdistill's and never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class UntrustedCodeError(ValueError):
    """A file names code (an import path) that the user did not ask to run."""


# Model families looked up by name in a library's own registry (``torchvision:resnet18``,
# ``timm:resnet18``, ``hf:<dir>`` loaded without remote code): the name selects one of the
# library's builders, it does not import a module of the file's choice.
LIBRARY_PREFIXES = ("torchvision:", "timm:", "hf:")


def is_import_path(arch: str) -> bool:
    """Whether an architecture name is an import path (``module:function``), i.e. code."""
    return ":" in arch and not arch.startswith(LIBRARY_PREFIXES)


@dataclass(frozen=True)
class CodeTrust:
    """The import paths this invocation may import when a file names them.

    Attributes:
        paths: import paths the user wrote (config keys, flags).
        everything: ``--trust-code``: any import path a file names may be imported.
    """

    paths: frozenset[str] = frozenset()
    everything: bool = False

    @classmethod
    def of(cls, paths: Iterable[str | None], *, trust_code: bool = False) -> CodeTrust:
        """Trust for the import paths among ``paths`` (other names are ignored)."""
        return cls(frozenset(p for p in paths if p and is_import_path(p)), bool(trust_code))

    def allows(self, arch: str) -> bool:
        return not is_import_path(arch) or self.everything or arch in self.paths

    def check(self, arch: str, where: str) -> None:
        """Raise :class:`UntrustedCodeError` unless ``arch`` (read from ``where``) may be imported."""
        if self.allows(arch):
            return
        raise UntrustedCodeError(
            f"{where} names the architecture {arch!r}, an import path: building it would import "
            "and run that code, and kdistill never runs code because a file says so. If you "
            "trust it, write the same path yourself (model.arch, kd.teachers[i].arch, --arch or "
            "--kd-teacher) or pass --trust-code (trust_code=True in Python)."
        )


NO_TRUST = CodeTrust()
"""Registered architectures only: what a file alone may name."""
