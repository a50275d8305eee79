"""Messages between runtime processes over loopback TCP: a JSON header and an optional raw payload
(KV bytes), framed by their two lengths."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

FRAME = struct.Struct("!II")  # header bytes, payload bytes
MAX_HEADER_BYTES = 64 << 20
MAX_PAYLOAD_BYTES = 8 << 30


def encode(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def _check(h: int, p: int) -> None:
    if h > MAX_HEADER_BYTES or p > MAX_PAYLOAD_BYTES:
        raise ConnectionError(f"frame too large ({h} + {p} bytes)")


class Conn:
    """A blocking socket with a send lock (workers: one reader thread, many senders)."""

    def __init__(self, sock: socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.lock = sock, threading.Lock()
        self.role = ""  # what the peer said it is: frontend | prefill (a KV sender)

    def send(self, header: dict, payload: memoryview | bytes = b"") -> None:
        h, payload = encode(header), memoryview(payload).cast("B")
        with self.lock:
            self.sock.sendall(FRAME.pack(len(h), len(payload)) + h)
            if len(payload):
                self.sock.sendall(payload)

    def _exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError("peer closed")
            got += k
        return buf

    def recv(self) -> tuple[dict, bytearray]:
        h, p = FRAME.unpack(self._exact(FRAME.size))
        _check(h, p)
        header = json.loads(self._exact(h))
        return header, (self._exact(p) if p else bytearray())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect(port: int, host: str = "127.0.0.1", timeout_s: float = 10.0) -> Conn:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.settimeout(None)
    return Conn(sock)


async def asend(writer: asyncio.StreamWriter, header: dict) -> None:
    h = encode(header)
    writer.write(FRAME.pack(len(h), 0) + h)
    await writer.drain()


async def arecv(reader: asyncio.StreamReader) -> tuple[dict, bytes]:
    h, p = FRAME.unpack(await reader.readexactly(FRAME.size))
    _check(h, p)
    header = json.loads(await reader.readexactly(h))
    return header, (await reader.readexactly(p) if p else b"")
