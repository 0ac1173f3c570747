"""The one exception type users see for bad input, so the CLI can print it as a single line."""


class ConfigError(ValueError):
    """A bad config value, checkpoint, budget or argument, detected before anything starts."""
