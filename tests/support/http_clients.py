"""HTTP clients for the e2e tests and benchmarks: http.client with
keep-alive, and a raw socket sending pipelined requests. Run as a script
for a client in a process of its own:

  http_clients.py pipelined HOST PORT PATH...   prints "<pid> <bytes sent>"
"""
import http.client
import os
import socket
import sys
import time


def pipelined(host, port, paths):
    """One sendall with all requests, then every response read; returns
    the bytes sent."""
    reqs = b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in paths)
    with socket.create_connection((host, port)) as s:
        s.sendall(reqs)
        # let every response arrive first, so that each read starts where a
        # response starts (a capture of call prefixes cannot see a response
        # line that begins in the middle of a read)
        time.sleep(0.5)
        data = b""
        while data.count(b"HTTP/1.1 ") < len(paths) or not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"connection closed after {data!r}")
            data += chunk
    return len(reqs)


def keep_alive(host, port, paths):
    """GET every path on one connection; returns the statuses."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    statuses = []
    for p in paths:
        conn.request("GET", p)
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()
    return statuses


if __name__ == "__main__":
    if sys.argv[1] == "pipelined":
        print(os.getpid(), pipelined(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
