"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class LGAError(Exception):
    """A problem with the user's input (file, option, data) that names the problem and the fix."""


class ValidationFailed(LGAError):
    """A parity or sanity check failed (exported graph, engine or benchmark gate)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with what was kept (e.g. "the state is saved: rerun with --resume"); the CLI
    prints it in one line and exits 130 like any interrupt."""
