"""Log levels journald can filter on: a `<N>` syslog priority in front of each stderr line.

Under systemd a service's stderr is a stream to journald, named in $JOURNAL_STREAM
("DEVICE:INODE"), and journald takes a leading `<N>` on each line as that line's priority
(SyslogLevelPrefix=yes, the default; systemd.exec(5)). Without it every line is logged at the
unit's default, info, and `journalctl -p warning` finds nothing. The engine does the same
(engine/src/loop/journal_log.hpp).

`use_journal_priorities()`, called once after logging is configured, gives the root logger's
handlers that write to that stream a formatter that prefixes every line of a record (a
traceback's too) with the record's priority. Anywhere else (a terminal, a test's pipe, `dgdo
run`'s children's inherited variable with stderr redirected) it changes nothing. The `[dgdo]`
lines printed on stdout carry no prefix: journald logs them at the default, info.
"""

from __future__ import annotations

import logging
import os


def priority(levelno: int) -> int:
    """The syslog priority (RFC 5424 severity) of a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def is_journal_stream(fd: int, journal_stream: str | None = None) -> bool:
    """True when `journal_stream` ($JOURNAL_STREAM by default) names the file open on `fd`."""
    value = os.environ.get("JOURNAL_STREAM") if journal_stream is None else journal_stream
    dev, sep, ino = (value or "").partition(":")
    if not (sep and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """The wrapped formatter's text, each of its lines led by the record's `<N>`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def use_journal_priorities(logger: logging.Logger | None = None) -> bool:
    """Prefixes the lines of `logger`'s (the root's) stream handlers that write to the journal's
    stream; True when there was one."""
    done = False
    for handler in (logger or logging.getLogger()).handlers:
        stream = getattr(handler, "stream", None)
        try:
            fd = stream.fileno() if stream is not None else -1
        except (OSError, ValueError, AttributeError):
            continue
        if fd >= 0 and is_journal_stream(fd) and not isinstance(handler.formatter, JournalFormatter):
            handler.setFormatter(JournalFormatter(handler.formatter or logging.Formatter()))
            done = True
    return done

