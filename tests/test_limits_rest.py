"""REST limits at their edges, with raw sockets against a real gateway process (issue 18): the
header deadline and size, the body deadline, the keep-alive idle timeout and the cap on open
connections. Just under each: served; over: a clear answer (408, 400 or 503 with a Warning) and
the connection closed — and the process keeps answering others, its memory comes back."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.abuse import HealthSampler, rss_mb, settled_rss_mb
from tests.helpers import GatewayProcess, peer_closed, new_uid, workitem

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
KEEPALIVE = 3.0
MAX_CONNECTIONS = 24
MAX_HEADER = 2048
MAX_SUBSCRIBER_AES = 2


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("rest-limits"), extra={"rest": {
        "header_timeout_seconds": HEADER_TIMEOUT, "body_timeout_seconds": BODY_TIMEOUT,
        "keepalive_seconds": KEEPALIVE, "max_connections": MAX_CONNECTIONS,
        "max_header_bytes": MAX_HEADER}, "events": {"max_subscriber_aes": MAX_SUBSCRIBER_AES}},
        dimse=False).start()
    yield proc
    proc.stop()


def connect(gw) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.rest_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length bodies only, as the gateway sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


closed = peer_closed


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def post_workitem(gw, uid: str) -> tuple[bytes, bytes]:
    body = json.dumps(workitem(uid)).encode()
    head = (f"POST {gw.base}/workitems?workitem={uid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/dicom+json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode(), body


def stored(gw, uid: str) -> int:
    sock = connect(gw)
    sock.sendall(get(f"{gw.base}/workitems/{uid}", "Connection: close\r\n"))
    status, _, _ = read_response(sock)
    sock.close()
    return status


def free_slots(gw, count: int, within: float = 15.0) -> None:
    """Wait until ``count`` connections at once are served (closed ones leave the server's
    count once their last answer is done, lingering included)."""
    deadline = time.monotonic() + within
    while True:
        socks = [connect(gw) for _ in range(count)]
        try:
            for sock in socks:
                sock.sendall(get("/health"))
            if all(read_response(sock)[0] == 200 for sock in socks):
                return
        except (EOFError, ConnectionError):
            pass
        finally:
            for sock in socks:
                sock.close()
        assert time.monotonic() < deadline, f"{count} connections were never served"
        time.sleep(0.2)


# ---- headers -----------------------------------------------------------------------------------

def test_a_silent_connection_gets_408_after_the_header_timeout(gw):
    sock = connect(gw)
    status, headers, _ = read_response(sock)
    assert status == 408
    assert "rest.header_timeout_seconds" in headers["warning"]
    assert closed(sock)
    sock.close()


def test_trickled_headers_get_408_and_headers_within_the_deadline_are_served(gw):
    sock = connect(gw)
    request = get("/health")
    answered = None
    for n in range(len(request) - 1):  # a byte every 0.2 s: far longer than the deadline
        sock.sendall(request[n:n + 1])
        sock.settimeout(0.2)
        try:
            answered = read_response(sock)
            break
        except (socket.timeout, TimeoutError):
            continue
    assert answered is not None and answered[0] == 408
    sock.close()

    sock = connect(gw)
    for piece in (request[:10], request[10:20], request[20:]):  # 0.4 s in all: within 2 s
        sock.sendall(piece)
        time.sleep(0.2)
    assert read_response(sock)[0] == 200
    sock.close()


def test_a_header_field_under_the_maximum_is_served_and_over_it_is_400_with_a_warning(gw):
    sock = connect(gw)
    sock.sendall(get("/health", f"X-Pad: {'a' * (MAX_HEADER - 100)}\r\n"))
    assert read_response(sock)[0] == 200
    sock.close()
    sock = connect(gw)
    sock.sendall(get("/health", f"X-Pad: {'a' * (MAX_HEADER + 100)}\r\n"))
    status, headers, _ = read_response(sock)
    assert status in (400, 431) and headers.get("warning", "").startswith("299 ")
    sock.close()


# ---- keep-alive --------------------------------------------------------------------------------

def test_a_kept_alive_connection_serves_the_next_request_and_idle_is_closed(gw):
    sock = connect(gw)
    sock.sendall(get("/health"))
    assert read_response(sock)[0] == 200
    time.sleep(KEEPALIVE / 4)
    sock.sendall(get("/health"))
    assert read_response(sock)[0] == 200, "the same connection, still open"
    assert closed(sock, within=KEEPALIVE + 10), "closed once idle for rest.keepalive_seconds"
    sock.close()


# ---- bodies ----------------------------------------------------------------------------------

def test_a_body_slower_than_the_deadline_is_408_and_stores_nothing(gw):
    uid = new_uid()
    head, body = post_workitem(gw, uid)
    sock = connect(gw)
    sock.sendall(head + body[:50])  # then nothing more
    status, headers, _ = read_response(sock)
    assert status == 408 and "rest.body_timeout_seconds" in headers["warning"]
    assert closed(sock)
    sock.close()
    assert stored(gw, uid) == 404, "nothing half-written"


def test_a_body_in_pieces_within_the_deadline_is_served(gw):
    uid = new_uid()
    head, body = post_workitem(gw, uid)
    sock = connect(gw)
    sock.sendall(head)
    third = len(body) // 3
    for piece in (body[:third], body[third:2 * third], body[2 * third:]):  # 0.6 s < 3 s
        time.sleep(0.2)
        sock.sendall(piece)
    assert read_response(sock)[0] == 201
    sock.close()
    assert stored(gw, uid) == 200


# ---- connections -------------------------------------------------------------------------------

def test_connections_up_to_the_cap_are_served_and_one_more_gets_503(gw):
    held = [connect(gw) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        last = connect(gw)
        last.sendall(get("/health"))
        assert read_response(last)[0] == 200, "the cap's last connection is served"
        over = connect(gw)
        status, headers, _ = read_response(over)
        assert status == 503 and "connections are open" in headers["warning"]
        assert closed(over)
        over.close()
        last.close()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the slots come back as the server sees the connections go
        sock = connect(gw)
        sock.sendall(get("/health", "Connection: close\r\n"))
        try:
            if read_response(sock)[0] == 200:
                break
        except EOFError:
            pass
        finally:
            sock.close()
        assert time.monotonic() < deadline, "no slot came back"
        time.sleep(0.1)


# ---- memory after many slow bodies ----------------------------------------------------------

def test_slow_bodies_are_cut_and_their_memory_returns(gw):
    """20 clients each send 900 KB of a 1 MiB body, then stall: each gets 408 at the body
    deadline, and the process's memory comes back near where it was."""
    before = rss_mb(gw.pid)
    statuses: list[int] = []
    peak: list[float] = []

    def slow_body() -> None:
        sock = connect(gw)
        try:
            sock.sendall(f"POST {gw.base}/workitems HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/dicom+json\r\n"
                         f"Content-Length: {1 << 20}\r\n\r\n".encode() + b" " * 900_000)
            peak.append(rss_mb(gw.pid))
            statuses.append(read_response(sock)[0])
        finally:
            sock.close()

    threads = [threading.Thread(target=slow_body) for _ in range(20)]
    with HealthSampler(gw) as health:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    health.assert_responsive("slow request bodies")
    assert statuses == [408] * 20
    after = settled_rss_mb(gw.pid, above=before + 8)
    print(f"RSS before the slow bodies {before:.0f} MiB, during {max(peak):.0f} MiB, "
          f"after {after:.0f} MiB")
    assert after < before + 8, "the bodies' buffers were given back"


# ---- subscriber AEs ----------------------------------------------------------------------------

def test_subscriber_aes_up_to_the_limit_then_403_with_a_warning(gw):
    def subscribe(ae: str) -> tuple[int, dict[str, str]]:
        sock = connect(gw)
        sock.sendall(f"POST {gw.base}/workitems/1.2.840.10008.5.1.4.34.5/subscribers/{ae} "
                     "HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     .encode())
        status, headers, _ = read_response(sock)
        sock.close()
        return status, headers

    assert [subscribe(f"LIMIT_AE{n}")[0] for n in range(MAX_SUBSCRIBER_AES)] == \
        [201] * MAX_SUBSCRIBER_AES
    status, headers = subscribe("LIMIT_AE_MORE")
    assert status == 403 and "events.max_subscriber_aes" in headers["warning"]
    assert subscribe("LIMIT_AE0")[0] == 201, "an AE that subscribes already is served"


# ---- a crowd of idle connections -------------------------------------------------------------

def test_a_crowd_of_idle_connections_is_closed_and_the_gateway_answers_meanwhile(gw):
    """Idle connections, half the cap: each
    gets 408 at the header deadline; /health is answered throughout; memory comes back."""
    free_slots(gw, MAX_CONNECTIONS // 2 + 4)  # earlier tests' connections may still linger
    before = rss_mb(gw.pid)
    with HealthSampler(gw, interval=0.3) as health:
        crowd = [connect(gw) for _ in range(MAX_CONNECTIONS // 2)]
        try:
            statuses = [read_response(sock)[0] for sock in crowd]
        finally:
            for sock in crowd:
                sock.close()
    health.assert_responsive("a crowd of idle connections")
    assert statuses == [408] * len(crowd)
    after = settled_rss_mb(gw.pid, above=before + 4)
    print(f"RSS before the crowd {before:.0f} MiB, after {after:.0f} MiB")
    assert after < before + 8
