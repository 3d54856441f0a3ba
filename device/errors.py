"""The one kind of error a person at the command line can fix, and the exit codes it maps to.

Every layer raises its own subclass of ``UserError`` (a missing key file, a tampered gallery, a model
that fails its sha256, a broker that refuses the certificate, ...); ``device.cli.main`` catches it once,
prints ``error: <message>`` on stderr and exits with the error's code. No traceback, no repeated
``except`` lists in the commands. Anything else that escapes is a bug and keeps its traceback.

Also here, because every layer needs it and it ends in a ``UserError``: text typed by people (names,
consent references, operators) on its way in and on its way out. On the way in, characters that steer a
terminal or a log instead of being read are refused: C0/C1 control characters (ESC starts an escape
sequence, ``\\n`` forges a table row or a log line), the line and paragraph separators, and the
bidirectional overrides and isolates that make text display in another order than it is stored. On the
way out, whatever was stored before the check existed (or arrived from elsewhere) is printed with those
characters escaped, so a line on screen is always one line of data.
"""

from __future__ import annotations

import unicodedata

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # the config or the files given cannot work: a retry (or a systemd restart) will not help


class UserError(Exception):
    """A problem the user can fix; its message says what and, where it can, how."""

    exit_code: int = EXIT_FAILURE


# Bidirectional embeddings, overrides and isolates (Unicode TR9): "Trojan Source" style reordering.
BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c")
UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


class UnsafeTextError(UserError):
    """Text given on the command line (or in a file) carries characters that steer a terminal or log."""

    exit_code = EXIT_USAGE


def is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES or char in BIDI_CONTROLS


def unsafe_characters(text: str) -> list[str]:
    """The offending characters of ``text``, in order, each once."""
    return list(dict.fromkeys(char for char in text if is_unsafe(char)))


def require_plain(text: str, what: str) -> str:
    """``text`` unchanged, or ``UnsafeTextError`` naming ``what`` and the characters (escaped)."""
    found = unsafe_characters(text)
    if found:
        listed = ", ".join(escape_char(char) for char in found)
        raise UnsafeTextError(
            f"{what} contains control characters ({listed}), which would reach terminals and logs as "
            "commands or extra lines; nothing was changed: write it without them"
        )
    return text


def escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object) -> str:
    """``text`` for a terminal or a log line: each unsafe character written as ``\\xNN``/``\\uNNNN``."""
    value = str(text)
    if not any(is_unsafe(char) for char in value):
        return value
    return "".join(escape_char(char) if is_unsafe(char) else char for char in value)
