"""The one kind of error a person at the command line can fix, and the exit codes it maps to.

Every layer raises its own subclass of ``UserError`` (a missing key file, a tampered gallery, a model
that fails its sha256, a broker that refuses the certificate, ...); ``device.cli.main`` catches it once,
prints ``error: <message>`` on stderr and exits with the error's code. No traceback, no repeated
``except`` lists in the commands. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # the config or the files given cannot work: a retry (or a systemd restart) will not help


class UserError(Exception):
    """A problem the user can fix; its message says what and, where it can, how."""

    exit_code: int = EXIT_FAILURE
