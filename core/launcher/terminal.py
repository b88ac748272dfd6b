"""``-t``: a pseudo-terminal for the container and the relay between it and the user's.

The container gets the pty's slave as its controlling terminal (job control works:
its shell is a session leader with a terminal). The monitor keeps the master and
copies bytes both ways; the user's terminal is put in raw mode for the run, so ^C,
^Z and the arrow keys reach the container's shell as bytes, and the window size
follows the user's (SIGWINCH).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import termios
import tty
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

_CHUNK = 65536


_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431


def open_pty() -> tuple[int, int]:
    """(master, slave) from the devpts instance at /dev/pts of this mount namespace.

    Called in the container's process after ``pivot_root``: the pty then belongs to
    the container's own devpts, so ``tty`` and ``ttyname`` find it in its /dev/pts.
    """
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    except BaseException:
        os.close(master)
        raise
    return master, slave


def send_master(sock: socket.socket, master: int) -> None:
    """Hand the pty's master to the monitor over its socket (SCM_RIGHTS).

    ``socket`` is imported here, not at the top (~4 ms of every start): whoever made
    ``sock`` imported it already, so in a container's child this costs a dict lookup.
    """
    import socket

    socket.send_fds(sock, [b"m"], [master])


def receive_master(sock: socket.socket) -> int:
    """The master the container's process sent; its window size set from ours."""
    import socket

    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not fds:
        raise OSError("the container's process sent no terminal")
    copy_window_size(fds[0])
    return fds[0]


def copy_window_size(master: int, source: int = 0) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)


def window_size(fd: int = 0) -> tuple[int, int] | None:
    """(rows, columns) of the terminal ``fd``, or None if it is not one."""
    try:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ,
                                                                b"\0" * 8))
    except OSError:
        return None
    return rows, columns


def set_window_size(master: int, rows: int, columns: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


@contextlib.contextmanager
def raw_terminal(fd: int = 0) -> Iterator[None]:
    """Raw mode on ``fd`` if it is a terminal, restored afterwards whatever happens."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def relay(master: int, *, stdin: int | None, output: Callable[[bytes], None],
          done: Callable[[], bool]) -> None:
    """Copy ``stdin`` -> ``master`` and ``master`` -> ``output`` until the pty closes.

    ``done`` says whether the container has exited; output still in the pty is copied
    before returning. A SIGWINCH resizes the container's terminal.
    """
    previous = signal.signal(signal.SIGWINCH, lambda *_: copy_window_size(master))
    try:
        readers = [master] + ([stdin] if stdin is not None else [])
        while True:
            try:
                ready, _, _ = select.select(readers, [], [], 0.2)
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, _CHUNK)
                except OSError:  # EIO: every slave fd is closed
                    data = b""
                if not data:
                    return
                output(data)
            if stdin is not None and stdin in ready:
                data = os.read(stdin, _CHUNK)
                if data:
                    write_all(master, data)
                else:
                    readers.remove(stdin)
                    stdin = None
            if not ready and done():
                return
    finally:
        signal.signal(signal.SIGWINCH, previous)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
