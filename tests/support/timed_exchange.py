"""One request and its answer per TCP connection on loopback, client and
server both in this process, the client timing itself with the wall clock:
how long connect() took (one round trip, plus the system calls) and how long
from sending the request to the first byte of the answer. What the collector
reports for these connections -- netflow's rtt (µs), httpflow's latency (ns)
-- must lie within these times, which catches a ns/µs/ms mix-up that a
"> 0" check cannot. The server may wait ``delay_s`` before answering,
which gives a lower bound too."""
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Timing:
    connect_ns: int   # connect() returned - connect() called
    answer_ns: int    # first answer byte received - request about to be sent


def _read_exactly(sock, n):
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise EOFError(f"peer closed after {len(got)} of {n} bytes")
        got += chunk
    return got


def timed_exchanges(request, response, n=1, delay_s=0.0, host="127.0.0.1"):
    """Run n connections, one exchange each; returns (server port, [Timing]).
    The server answers ``delay_s`` after reading the whole request, then
    closes first, so the client's closing handshake needs no application."""
    srv = socket.create_server((host, 0))
    port = srv.getsockname()[1]
    errors = []

    def serve():
        try:
            for _ in range(n):
                conn, _ = srv.accept()
                with conn:
                    _read_exactly(conn, len(request))
                    time.sleep(delay_s)
                    conn.sendall(response)
        except Exception as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    timings = []
    try:
        for _ in range(n):
            with socket.socket(srv.family, socket.SOCK_STREAM) as c:
                t0 = time.monotonic_ns()
                c.connect((host, port))
                t1 = time.monotonic_ns()
                c.sendall(request)
                first = c.recv(len(response))
                t2 = time.monotonic_ns()
                got = first + _read_exactly(c, len(response) - len(first))
                assert got == response, got
                assert c.recv(1) == b""  # the server closed
            timings.append(Timing(connect_ns=t1 - t0, answer_ns=t2 - t1))
    finally:
        thread.join(10)
        srv.close()
    if errors:
        raise errors[0]
    return port, timings
