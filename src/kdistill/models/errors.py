"""The error of model files, below every module that reads them (so that none of them needs
another's imports to raise it)."""

from __future__ import annotations

from kdistill.files import ArtifactError


class ModelFileError(ArtifactError):
    """A model file that is missing, unreadable, corrupted or not kdistill's."""
