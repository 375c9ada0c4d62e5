"""The error of configuration: a value, key or file that cannot be used (defined with the field
checks in :mod:`kdistill.validation`, which every config class runs)."""

from kdistill.validation import ConfigError

__all__ = ["ConfigError"]
