"""A detached container's console: its stdin and output, for ``lamina attach``.

Docker keeps the stdin of a container run with ``-d -i`` or ``-d -t`` open, so that
``docker attach`` can type into it later (``run -dit IMAGE sh``, then ``attach``,
then Ctrl-P Ctrl-Q to leave it running). Here the detached monitor holds that stdin
(the pty's master with ``-t``, else a pipe's write end) and listens on a Unix socket,
``attach.sock`` in the container's directory (mode 0600 in a 0700 directory: root's
alone). Any number of clients may attach at once, screen-sharing style.

The socket carries frames, a type byte and a 4-byte big-endian length before the
payload: :data:`STDIN` and :data:`RESIZE` (rows, columns) from a client,
:data:`STDOUT` and :data:`STDERR` to every client. When the container's process
exits the monitor closes the socket: a client reads the end, as ``attach`` ends
with the container. A client's end-of-input leaves the container's stdin open (as
Docker's for a detached container): another attach may type into it.

The path of the socket can exceed what ``sockaddr_un`` holds (108 bytes: a store
under a deep directory), so it is bound and connected through
``/proc/self/fd/<directory fd>/``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import ContainerError, host_error
from . import terminal

SOCKET_NAME = "attach.sock"
STDIN, STDOUT, STDERR, RESIZE = 0, 1, 2, 3
STREAM_TYPES = {"stdout": STDOUT, "stderr": STDERR}
HEADER = struct.Struct(">BI")
#: the longest frame either side accepts (a client sends what one read returned)
MAX_FRAME = 1 << 20
#: how long a client may keep a frame of output waiting before it is dropped: a stuck
#: client must not stop the container's output (it is logged all the same)
SEND_TIMEOUT = 5.0


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def frames(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Take every whole frame off the front of ``buffer``; a bad length raises ValueError."""
    while len(buffer) >= HEADER.size:
        kind, length = HEADER.unpack_from(buffer)
        if length > MAX_FRAME:
            raise ValueError(f"a frame of {length} bytes")
        if len(buffer) < HEADER.size + length:
            return
        payload = bytes(buffer[HEADER.size:HEADER.size + length])
        del buffer[:HEADER.size + length]
        yield kind, payload


@contextlib.contextmanager
def _in_directory(directory: Path) -> Iterator[str]:
    """``directory`` as a short path prefix (``/proc/self/fd/N``) while the block runs."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class Console:
    """The monitor's side: accepts clients, passes their input to ``stdin`` (a pty master
    or a pipe) on a thread of its own, and :meth:`send` copies output to each of them."""

    def __init__(self, directory: Path, stdin: int, *, tty: bool) -> None:
        self.path = directory / SOCKET_NAME
        self.stdin = stdin
        self.tty = tty
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead monitor's
        try:
            with _in_directory(directory) as short:
                old = os.umask(0o177)
                try:
                    self.listener.bind(f"{short}/{SOCKET_NAME}")
                finally:
                    os.umask(old)
            self.listener.listen(8)
        except OSError as exc:
            self.listener.close()
            raise host_error(exc, "listen for attach", self.path) from exc
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._serve, name="console", daemon=True)
        self.thread.start()

    def send(self, stream: str, data: bytes) -> None:
        """Copy ``data`` of ``stream`` to every client; a client that cannot take it in
        :data:`SEND_TIMEOUT` seconds, or has gone, is dropped."""
        if not self.clients:
            return
        message = frame(STREAM_TYPES[stream], data)
        with self.lock:
            for fd, (sock, _) in list(self.clients.items()):
                try:
                    sock.sendall(message)
                except OSError:
                    self._drop(fd)

    def close(self) -> None:
        """Hang up on every client and remove the socket; the thread ends."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self.thread.join(timeout=5)
        with self.lock:
            for fd in list(self.clients):
                self._drop(fd)
        self.listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- the thread --------------------------------------------------------------------

    def _serve(self) -> None:
        listener = self.listener.fileno()
        while True:
            with self.lock:
                watched = [self._wake_r, listener, *self.clients]
            try:
                ready, _, _ = select.select(watched, [], [])
            except (OSError, ValueError):  # a client dropped by send meanwhile
                continue
            if self._wake_r in ready:
                return
            for fd in ready:
                if fd == listener:
                    self._accept()
                else:
                    self._receive(fd)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(SEND_TIMEOUT)
        with self.lock:
            self.clients[sock.fileno()] = (sock, bytearray())

    def _receive(self, fd: int) -> None:
        with self.lock:
            entry = self.clients.get(fd)
        if entry is None:
            return
        sock, buffer = entry
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            with self.lock:
                self._drop(fd)
            return
        buffer += data
        try:
            for kind, payload in frames(buffer):
                if kind == STDIN and payload:
                    terminal.write_all(self.stdin, payload)
                elif kind == RESIZE and self.tty and len(payload) == 4:
                    rows, columns = struct.unpack(">HH", payload)
                    terminal.set_window_size(self.stdin, rows, columns)
        except (ValueError, OSError):  # a bad frame, or the container's stdin closed
            with self.lock:
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        """Forget a client (the caller holds the lock)."""
        entry = self.clients.pop(fd, None)
        if entry is not None:
            with contextlib.suppress(OSError):
                entry[0].shutdown(socket.SHUT_RDWR)
            entry[0].close()


def connect(directory: Path, name: str) -> socket.socket | None:
    """A client's connection to the container's console, or None if it has none (it was
    started without ``-i`` and ``-t``, or in the foreground)."""
    if not (directory / SOCKET_NAME).exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _in_directory(directory) as short:
            sock.connect(f"{short}/{SOCKET_NAME}")
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None  # it has just exited
    except OSError as exc:
        sock.close()
        raise ContainerError(f"cannot attach to container {name}: {exc.strerror}",
                             hint="is its monitor still running? lamina ps -a says") from None
    return sock


DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_SPECIAL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str) -> bytes:
    """Docker's ``--detach-keys``: comma-separated keys, each a letter or ``ctrl-`` with a
    letter or one of ``@ [ \\ ] ^ _``; "" disables detaching."""
    keys = bytearray()
    for key in filter(None, text.split(",")):
        name = key.removeprefix("ctrl-")
        if key.startswith("ctrl-") and len(name) == 1 and "a" <= name.lower() <= "z":
            keys.append(ord(name.lower()) - ord("a") + 1)
        elif key.startswith("ctrl-") and name in _CTRL_SPECIAL:
            keys.append(_CTRL_SPECIAL[name])
        elif len(key) == 1 and key.isascii() and key.isprintable():
            keys.append(ord(key))
        else:
            raise ContainerError(f"invalid detach key {key!r} in {text!r}",
                                 hint="keys are a letter or ctrl-<a-z, @, [, \\, ], ^ or _>, "
                                 "separated by commas: ctrl-p,ctrl-q")
    return bytes(keys)


class _DetachKeys:
    """Watches typed input for the detach sequence, holding back a partial match (the
    container gets those bytes if the sequence breaks off)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(what to pass on, whether the whole sequence was typed)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    return bytes(out), True
                continue
            if self.matched:
                out += self.keys[:self.matched]
                self.matched = 0
            if byte == self.keys[0]:
                self.matched = 1
            else:
                out.append(byte)
        return bytes(out), False


def relay(sock: socket.socket, *, stdin: int | None, tty: bool, detach_keys: bytes) -> bool:
    """The client's side: the console's output to our stdout and stderr, ``stdin`` (if
    given) to the container, until the container's end (False) or the detach keys
    (True). With ``tty`` our terminal is raw and its size follows ours."""
    import signal

    def resize(*_: object) -> None:
        size = terminal.window_size(stdin if stdin is not None else 0)
        if size is not None:
            with contextlib.suppress(OSError):
                sock.sendall(frame(RESIZE, struct.pack(">HH", *size)))

    previous = None
    if tty and stdin is not None:
        resize()
        previous = signal.signal(signal.SIGWINCH, resize)
    detach = _DetachKeys(detach_keys if stdin is not None else b"")
    buffer = bytearray()
    readers = [sock.fileno(), *([stdin] if stdin is not None else [])]
    try:
        with terminal.raw_terminal(stdin) if tty and stdin is not None \
                else contextlib.nullcontext():
            while True:
                try:
                    ready, _, _ = select.select(readers, [], [])
                except InterruptedError:
                    continue
                if sock.fileno() in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return False
                    buffer += data
                    try:
                        for kind, payload in frames(buffer):
                            terminal.write_all(1 if kind == STDOUT else 2, payload)
                    except ValueError:
                        return False
                if stdin is not None and stdin in ready:
                    data = os.read(stdin, 1 << 16)
                    if not data:  # our input ended: the container's stays open
                        readers.remove(stdin)
                        continue
                    data, detached = detach.feed(data)
                    if data:
                        sock.sendall(frame(STDIN, data))
                    if detached:
                        return True
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
