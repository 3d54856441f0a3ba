"""Is the unit's clock right? Every command carries an issue time and an expiry, so a unit whose clock
is wrong (a Pi has no battery clock: after a power cut it starts from the last time it saved, hours or
days behind, until NTP corrects it) would take a recorded command as fresh. Until the clock has been
synchronised, time-bound commands are refused and health says so.

The kernel keeps the answer: NTP clients (systemd-timesyncd, chrony, ntpd) clear its "unsynchronised"
status once they have set the clock, and that is what ``timedatectl``'s ``NTPSynchronized`` and
systemd's ``time-sync.target`` read too. ``adjtimex(2)`` with no mode bits set only reads it, as any user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

ClockProbe = Callable[[], bool]
"""True while the clock is known to be synchronised; the seam tests replace."""

TIME_ERROR = 5  # adjtimex's return value while the kernel's clock is not synchronised (STA_UNSYNC)
TIMEX_BYTES = 512  # more than struct timex on any Linux ABI; all zero means "read, change nothing"


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """Loaded once: ``find_library`` runs ``ldconfig``, far too slow for every command and health."""
    name = ctypes.util.find_library("c")
    try:
        return None if name is None else ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def kernel_clock_synchronised() -> bool:
    """The kernel's view through ``adjtimex``; an error is taken as unsynchronised (fail closed)."""
    libc = _libc()
    if libc is None:
        return False
    try:
        state = int(libc.adjtimex(ctypes.create_string_buffer(TIMEX_BYTES)))
    except AttributeError:
        return False
    return state not in (-1, TIME_ERROR)


def always_synchronised() -> bool:
    """``mqtt.clock_check = "off"``: for machines whose kernel cannot judge its clock (containers)."""
    return True
