"""The data layer's one error type (its own module, so every data module can raise it)."""


class DataError(ValueError):
    """Data that is missing, malformed or unusable, with what to do about it."""


__all__ = ["DataError"]
