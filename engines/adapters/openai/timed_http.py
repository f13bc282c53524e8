"""A streaming HTTP/1.1 response read with the kernel's receive time of every byte.

A Python client timestamps a chunk when its thread gets to it: with 64 streams on 2 busy cores that is
milliseconds after the bytes arrived, and TTFT and ITL grow with the client's own load. On Linux the socket
option SO_TIMESTAMPNS makes the kernel stamp every received segment, and recvmsg() hands the stamp over with
the data: a line's time is the arrival of the segment that completed it, whenever the thread reads it. One read
that takes several queued segments gets the last one's stamp, so their tokens look merged: store/flags.py flags
a cell where that happened often ("merged").
Elsewhere (or if the option is refused) the time is when the data was read, as before.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections import deque

SO_TIMESTAMPNS = 35  # Linux, asm-generic (SCM_TIMESTAMPNS is the same number); Python does not export it
SO_TIMESTAMPING = 37  # and SCM_TIMESTAMPING: transmit times come back on the socket's error queue
_TX_FLAGS = (1 << 1) | (1 << 4) | (1 << 11)  # SOF_TIMESTAMPING_TX_SOFTWARE | _SOFTWARE | _OPT_TSONLY
_ANC = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_TX_WAIT_S = 0.002  # how long to wait for the transmit time before taking the clock instead


def kernel_stamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp received segments; False where it cannot."""
    if not sys.platform.startswith("linux") or not _ANC:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False


def _perf_from_wall(sec: int, nsec: int) -> float:
    """A kernel CLOCK_REALTIME stamp on the perf_counter clock (their offset read now)."""
    now = time.perf_counter()
    return now - max(0.0, time.time() - (sec + nsec * 1e-9))


def transmit_stamps(sock: socket.socket) -> bool:
    """Ask the kernel for the time each send left the socket (Linux); False where it cannot."""
    if not sys.platform.startswith("linux") or not _ANC:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _TX_FLAGS)
        return True
    except OSError:
        return False


def transmit_time(sock: socket.socket) -> float | None:
    """The kernel's time for the last send, from the error queue, on the perf_counter clock; None if it does not
    come within a moment. The queue is drained either way: an undrained one keeps the socket signalling."""
    deadline = time.perf_counter() + _TX_WAIT_S
    found = None
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout, Python would first wait for readable data, not for the queue
    try:
        while True:
            try:
                _, anc, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(48), socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                if found is not None or time.perf_counter() > deadline:
                    return found
                continue
            except OSError:
                return found
            found = _stamp(anc) or found
    finally:
        sock.settimeout(timeout)


def _stamp(anc: list) -> float | None:
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(cdata) >= 16:
            sec, nsec = struct.unpack("qq", cdata[:16])  # ts[0]: the software stamp
            if sec or nsec:
                return _perf_from_wall(sec, nsec)
    return None


class TimedReader:
    """Bytes from a socket, each piece with its arrival time on the perf_counter clock. Without a socket, only the
    pieces handed to it (TimedBody's decoded body)."""

    def __init__(self, sock: socket.socket | None, deadline: float = 0.0, stamped: bool = False):
        self.sock, self.deadline, self.stamped = sock, deadline, stamped
        self.pieces: deque[list] = deque()  # [bytes, arrival]; the first may be partly consumed
        self.eof = False
        self.kernel_times = 0  # pieces whose time came from the kernel (the run stores the share)
        self.transmit_stamped = False  # the request's send time is the kernel's

    def _fill(self) -> bool:
        if self.sock is None:
            return False
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        if self.stamped:
            data, anc, _flags, _addr = self.sock.recvmsg(65536, _ANC)
        else:
            data, anc = self.sock.recv(65536), []
        now = time.perf_counter()
        arrival = now
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack("qq", cdata[:16])
                arrival = _perf_from_wall(sec, nsec)  # when the kernel received it, whenever we read it
                self.kernel_times += 1
        if not data:
            self.eof = True
            return False
        self.pieces.append([data, arrival])
        return True

    def readline(self) -> tuple[bytes, float | None]:
        """One line with its \\n, and the arrival of the piece that completed it; b"" at the end."""
        out = bytearray()
        while True:
            if not self.pieces and (self.eof or not self._fill()):
                return bytes(out), None
            piece = self.pieces[0]
            cut = piece[0].find(b"\n")
            if cut < 0:
                out += piece[0]
                self.pieces.popleft()
                continue
            out += piece[0][: cut + 1]
            piece[0] = piece[0][cut + 1 :]
            if not piece[0]:
                self.pieces.popleft()
            return bytes(out), piece[1]

    def read(self, n: int) -> list[tuple[bytes, float]]:
        """Exactly n bytes (fewer at the end), as pieces with their arrival times."""
        got: list[tuple[bytes, float]] = []
        while n > 0:
            if not self.pieces and (self.eof or not self._fill()):
                break
            piece = self.pieces[0]
            take = piece[0][:n]
            got.append((take, piece[1]))
            n -= len(take)
            piece[0] = piece[0][len(take) :]
            if not piece[0]:
                self.pieces.popleft()
        return got


class TimedBody:
    """The response body (chunked, sized or read to the close) as lines with arrival times."""

    def __init__(self, raw: TimedReader, chunked: bool, length: int | None):
        self.raw, self.chunked, self.left = raw, chunked, length
        self.body = TimedReader(None)  # the decoded body, fed by _more()
        self.done = False

    def _more(self) -> bool:
        if self.done:
            return False
        if self.chunked:
            line, _ = self.raw.readline()
            size = int(line.split(b";")[0].strip() or b"0", 16) if line else 0
            if size == 0:
                self.done = True
                return False
            pieces = self.raw.read(size)
            self.raw.read(2)  # the chunk's CRLF
        elif self.left is not None:
            pieces = self.raw.read(min(self.left, 65536))
            self.left -= sum(len(p) for p, _ in pieces)
            self.done = self.left <= 0 or not pieces
        else:
            pieces = self.raw.read(65536) if (self.raw.pieces or self.raw._fill()) else []
            self.done = not pieces
        self.body.pieces.extend([p, t] for p, t in pieces if p)
        return bool(pieces)

    def readline(self) -> tuple[bytes, float | None]:
        out = bytearray()
        while True:
            line, t = self.body.readline() if self.body.pieces else (b"", None)
            out += line
            if out.endswith(b"\n"):
                return bytes(out), t
            if not self._more():
                return bytes(out), t


def open_stream(host: str, port: int, path: str, body: bytes, headers: dict[str, str], connect_timeout: float,
                deadline: float, on_send=None) -> tuple[int, dict[str, str], TimedBody, TimedReader, socket.socket]:  # fmt: skip
    """POST and read the status and headers: (status, headers, body, raw reader, socket). The caller closes it.
    The request's clock starts when it is written, once connected, as with a client that keeps its connections
    open (vLLM's): `on_send(t)` gets the kernel's transmit time of its last byte where the kernel gives one,
    else the clock read right before the write (a thread switch between the two would count against TTFT)."""
    sock = socket.create_connection((host, port), timeout=connect_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = TimedReader(sock, deadline, kernel_stamps(sock))
        tx = transmit_stamps(sock)
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}", "Connection: close",
                *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        before = time.perf_counter()
        sock.sendall(request)
        sent = transmit_time(sock) if tx else None
        raw.transmit_stamped = sent is not None
        if on_send is not None:
            on_send(sent if sent is not None else before)
        status_line, _ = raw.readline()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ConnectionResetError(f"not an HTTP response: {status_line[:80]!r}")
        found: dict[str, str] = {}
        while True:
            line, _ = raw.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            found[key.strip().lower()] = value.strip()
        chunked = "chunked" in found.get("transfer-encoding", "").lower()
        length = int(found["content-length"]) if not chunked and found.get("content-length", "").isdigit() else None
        return int(parts[1]), found, TimedBody(raw, chunked, length), raw, sock
    except BaseException:
        sock.close()
        raise
