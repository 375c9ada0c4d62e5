"""The error of configuration: a value, key or file that cannot be used."""


class ConfigError(ValueError):
    """A configuration value, key or file that cannot be used."""
