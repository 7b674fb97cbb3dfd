"""A scripted HTTP/1.1 exchange over real sockets, one process per side,
using every syscall http.bpf.c watches: sendto, recvfrom, writev, sendmsg,
recvmsg, write, sendfile, readv, read. Sizes are fixed so a test can assert
the captured counters exactly. `plain` mode moves non-HTTP bytes.

  http_peer.py server HOST [plain]   prints {"pid", "port"}, serves one connection
  http_peer.py client HOST PORT [plain]  prints {"pid", "lport"} when done
"""
import json
import os
import socket
import sys
import tempfile

REQ1 = b"GET /k/one?x=1 HTTP/1.1\r\nHost: k\r\n\r\n"
RESP1_HDR = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
RESP1 = RESP1_HDR + b"a" * 1000
REQ2_HDR = b"POST /k/two HTTP/1.1\r\nHost: k\r\nContent-Length: 300\r\n\r\n"
REQ2 = REQ2_HDR + b"b" * 300
RESP2_HDR = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5000\r\n\r\n"
RESP2_BODY = b"c" * 5000
RESP2 = RESP2_HDR + RESP2_BODY
PLAIN = b"hello, not http " * 64


def recv_exactly(sock, n, how):
    got = b""
    while len(got) < n:
        if how == "recvmsg":
            data = sock.recvmsg(n - len(got))[0]
        elif how == "readv":
            buf = bytearray(min(n - len(got), 700))
            k = os.readv(sock.fileno(), [buf])
            data = bytes(buf[:k])
        elif how == "read":
            data = os.read(sock.fileno(), n - len(got))
        else:
            data = sock.recv(n - len(got))
        if not data:
            raise SystemExit(f"EOF after {len(got)} of {n} bytes")
        got += data
    return got


def server(host, plain):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen(1)
    print(json.dumps({"pid": os.getpid(), "port": ls.getsockname()[1]}), flush=True)
    c, _ = ls.accept()
    if plain:
        data = recv_exactly(c, len(PLAIN), "recv")
        c.sendall(data)
    else:
        assert recv_exactly(c, len(REQ1), "recv") == REQ1
        assert os.writev(c.fileno(), [RESP1_HDR, RESP1[len(RESP1_HDR):]]) == len(RESP1)
        assert recv_exactly(c, len(REQ2), "recvmsg") == REQ2
        os.write(c.fileno(), RESP2_HDR)
        with tempfile.TemporaryFile() as f:
            f.write(RESP2_BODY)
            f.flush()
            off = 0
            while off < len(RESP2_BODY):
                off += os.sendfile(c.fileno(), f.fileno(), off, len(RESP2_BODY) - off)
    assert c.recv(1) == b""  # the client closes first
    c.close()
    ls.close()


def client(host, port, plain):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect((host, port))
    if plain:
        s.sendall(PLAIN)
        recv_exactly(s, len(PLAIN), "recv")
    else:
        s.sendall(REQ1)
        assert recv_exactly(s, len(RESP1), "recv") == RESP1
        assert s.sendmsg([REQ2_HDR, REQ2[len(REQ2_HDR):]]) == len(REQ2)
        assert recv_exactly(s, len(RESP2_HDR), "readv") == RESP2_HDR
        assert recv_exactly(s, len(RESP2_BODY), "read") == RESP2_BODY
    lport = s.getsockname()[1]
    s.close()
    print(json.dumps({"pid": os.getpid(), "lport": lport}), flush=True)


if __name__ == "__main__":
    plain = sys.argv[-1] == "plain"
    if sys.argv[1] == "server":
        server(sys.argv[2], plain)
    else:
        client(sys.argv[2], int(sys.argv[3]), plain)
