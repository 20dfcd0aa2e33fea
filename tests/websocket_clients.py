#!/usr/bin/env python3
"""kv_server --websocket as the Python `websockets` client sees it: large binary messages
byte-exact, text, pings, closes with their codes; then, through the handshake the library
made, frames no library sends (unmasked, reserved bits, a 2^63 length, a control frame over
125 bytes), each closed with 1002; and openings that are attacks: a request header of a
megabyte (431, and closed) and a request a byte a second (closed at the opening's deadline,
while another client is served).

Needs the websockets package; a missing one is a failure, not a skip. KV_SERVER names the
binary (default: the debug build)."""

import os
import socket
import struct
import sys
import tempfile
import time

from kv_process import start_server

try:
    from websockets.exceptions import ConnectionClosed
    from websockets.frames import Frame, Opcode
    from websockets.sync.client import connect
except ImportError:
    sys.exit("websocket_clients.py: websockets is missing: python3 -m pip install websockets")


def messages_pings_and_closes(url):
    with connect(url, max_size=None, compression=None) as ws:
        for size in (0, 125, 126, 65_536, 1 << 20, 8 << 20):
            payload = os.urandom(size)
            ws.send(payload)
            assert ws.recv() == payload, f"{size} bytes"
        text = "Grüße, κόσμε ✓ " * 1000
        ws.send(text)
        assert ws.recv() == text
        # A message in fragments, as an iterator of pieces: one message back.
        ws.send(iter([b"one, ", b"two, ", b"three"]))
        assert ws.recv() == b"one, two, three"
        pong = ws.ping(b"are you there")
        assert pong.wait(10), "a pong"
        # Many in flight before any is read: each back, in order.
        sent = [os.urandom(n % 300) for n in range(2000)]
        for payload in sent:
            ws.send(payload)
        for payload in sent:
            assert ws.recv() == payload
        ws.close(4001, "done here")
        received = ws.protocol.close_rcvd
        assert received is not None and received.code == 4001, received
    print("websocket_clients.py: messages up to 8 MiB byte-exact, text, fragments, ping, 2,000 in flight, close 4001")


def refused_with(url, raw, code, what):
    with connect(url, compression=None) as ws:
        ws.send(b"before")
        assert ws.recv() == b"before"
        ws.socket.sendall(raw)
        try:
            ws.recv(timeout=10)
            raise AssertionError(f"{what}: answered")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == code, (what, closed.rcvd)
    print(f"websocket_clients.py: {what}: closed with {code}")


def hostile_frames(url):
    unmasked = Frame(Opcode.TEXT, b"no mask").serialize(mask=False)
    # The library will not make it: its own frame, with RSV1 set after.
    reserved = bytearray(Frame(Opcode.TEXT, b"rsv").serialize(mask=True))
    reserved[0] |= 0x40
    huge = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 1 << 63) + b"mask"
    long_ping = bytes([0x89, 0x80 | 126]) + struct.pack(">H", 126) + b"mask" + b"p" * 126
    refused_with(url, unmasked, 1002, "an unmasked frame")
    refused_with(url, bytes(reserved), 1002, "a reserved bit")
    refused_with(url, huge, 1002, "a 2^63 length")
    refused_with(url, long_ping, 1002, "a ping of 126 bytes")
    refused_with(url, Frame(Opcode.TEXT, b"caf\xe9").serialize(mask=True), 1007, "text not UTF-8")


def raw_connection(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def megabyte_header(port):
    sock = raw_connection(port)
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * (1 << 20)
    try:
        sock.sendall(request)
    except OSError:
        pass  # Refused before all of it was taken.
    answer = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    except ConnectionResetError:
        pass
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    print("websocket_clients.py: a request header of 1 MB: 431, closed")


def a_byte_a_second(port, deadline, url):
    sock = raw_connection(port)
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    started = time.monotonic()
    closed = False
    for byte in request:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        # Served meanwhile.
        with connect(url, compression=None) as ws:
            ws.send("beside it")
            assert ws.recv() == "beside it"
        sock.settimeout(1.0)
        try:
            if sock.recv(1) == b"":
                closed = True
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
            break
    elapsed = time.monotonic() - started
    assert closed, "never closed"
    assert deadline - 0.5 <= elapsed <= deadline + 3, elapsed
    print(f"websocket_clients.py: a request a byte a second: closed after {elapsed:.1f} s")


def main():
    work = tempfile.mkdtemp()
    server, port = start_server(
        os.path.join(work, "server.log"), "--websocket-handshake-timeout", "3"
    )
    url = f"ws://127.0.0.1:{port}/"
    try:
        messages_pings_and_closes(url)
        hostile_frames(url)
        megabyte_header(port)
        a_byte_a_second(port, 3.0, url)
    finally:
        server.terminate()
        server.wait(10)


main()
