"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from typing import Literal

Lines = Literal["all", "first", "last"]


class LGAError(Exception):
    """A problem with the user's input (file, option, data) that names the problem and the fix."""


class ValidationFailed(LGAError):
    """A parity or sanity check failed (exported graph, engine or benchmark gate)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with what was kept (e.g. "the state is saved: rerun with --resume"); the CLI
    prints it in one line and exits 130 like any interrupt."""


def one_line(exc_or_text: BaseException | str, limit: int = 300, lines: Lines = "all") -> str:
    """`exc_or_text` as one line of at most `limit` characters, so a multi-line message (a C++ trace,
    a child's stderr) never breaks the one-line errors users and tests rely on. `lines` picks all
    non-blank lines (joined), the first (a runtime's headline) or the last (a traceback's cause); an
    exception with no text falls back to its type's name, a blank text to ''."""
    text = str(exc_or_text)
    if lines != "all":
        kept = [line for line in text.splitlines() if line.strip()]
        text = (kept[0] if lines == "first" else kept[-1]) if kept else ""
    text = " ".join(text.split())[:limit]
    if text or isinstance(exc_or_text, str):
        return text
    return type(exc_or_text).__name__
