"""The exceptions the CLI turns into one line: bad input (ConfigError, exit 2) and the two ways a stop signal ends
a run (StoppedWithoutFinal, exit 0; StopNow, exit 128 + the signal)."""


class ConfigError(ValueError):
    """A bad config value, checkpoint, budget or argument, detected before anything starts."""


class StopNow(BaseException):
    """A second stop signal reached `distracer train`: it stops at once (a BaseException, so no handler on the way
    swallows it); the CLI exits with 128 + `signum`."""

    def __init__(self, line: str, signum: int):
        super().__init__(line)
        self.signum = signum


class StoppedWithoutFinal(Exception):
    """A stop was asked for and parts of the run died with the signal, so no final checkpoint could be written; the
    newest one stands (the CLI prints the line and exits 0)."""
