"""The one exception type the CLI turns into a single error line, and escaping of untrusted text."""

from __future__ import annotations

MAX_SHOWN = 300  # characters of one untrusted name shown in a message


def escape(text: object, limit: int | None = None) -> str:
    """``text`` with every non-printable character (ANSI escapes, line breaks, NUL, bidi controls) written as
    a Python escape such as ``\\x1b``, so it prints as one inert line; cut to ``limit`` characters."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    if limit is not None and len(shown) > limit:
        shown = shown[:limit] + "..."
    return shown


def quoted(name: object) -> str:
    """A name read from an untrusted file, escaped, shortened and quoted for a message."""
    return f"'{escape(name, MAX_SHOWN)}'"


class ProbekitError(Exception):
    """A problem with the user's input (model, data, options, paths).

    The CLI prints ``probekit: error: <message>`` and exits with status 2,
    without a traceback. Line breaks and other control characters in the
    message (often from echoed user input or a file) are escaped, so it stays
    one inert line.
    """

    def __init__(self, message: str = ""):
        super().__init__(escape(message))
