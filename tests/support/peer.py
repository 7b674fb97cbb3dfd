"""A test peer process: `peer.py MODE ARGS`. Prints one JSON line when
ready ({"pid", "port"}), then one JSON line of results per connection or
exchange. Moves exactly the bytes it is told to."""
import json
import os
import socket
import sys
import time


def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def server_socket(host, kind):
    """A socket bound to host, port 0; on `::` a dual-stack one (IPv4 peers
    too, as v4-mapped addresses), whatever net.ipv6.bindv6only says."""
    s = socket.socket(family(host), kind)
    if host == "::":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s


def recv_all(s):
    n = 0
    while True:
        d = s.recv(65536)
        if not d:
            return n
        n += len(d)


def send_exact(s, n, chunks=1, pause=0.0):
    per = [n // chunks + (1 if i < n % chunks else 0) for i in range(chunks)]
    for i, size in enumerate(per):
        s.sendall(b"x" * size)
        if pause and i < chunks - 1:
            time.sleep(pause)


def tcp_server(host, reply, conns):
    srv = server_socket(host, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(64)
    out(pid=os.getpid(), port=srv.getsockname()[1])
    for _ in range(int(conns)):
        c, addr = srv.accept()
        got = recv_all(c)
        send_exact(c, int(reply))
        c.close()
        out(received=got, sent=int(reply), peer_port=addr[1])


def tcp_client(host, port, size, chunks="1", pause="0", idle="0"):
    """Connects, sends size bytes (in chunks, pause seconds apart), stays
    idle `idle` seconds, shuts down its side and reads the reply."""
    out(pid=os.getpid())
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.connect((host, int(port)))
    lport = s.getsockname()[1]
    send_exact(s, int(size), int(chunks), float(pause))
    time.sleep(float(idle))
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s)
    s.close()
    out(sent=int(size), received=got, lport=lport)


def tcp_many(host, port, count, size, pause="0"):
    """count connections one after the other (pause seconds apart), each
    sending size bytes and reading the reply until the server closes."""
    out(pid=os.getpid())
    for i in range(int(count)):
        if i:
            time.sleep(float(pause))
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.connect((host, int(port)))
        send_exact(s, int(size))
        s.shutdown(socket.SHUT_WR)
        recv_all(s)
        s.close()
    out(sent=int(count) * int(size))


def udp_server(host, reply, datagrams):
    s = server_socket(host, socket.SOCK_DGRAM)
    s.bind((host, 0))
    out(pid=os.getpid(), port=s.getsockname()[1])
    got = 0
    for _ in range(int(datagrams)):
        d, addr = s.recvfrom(65536)
        got += len(d)
        s.sendto(b"y" * int(reply), addr)
    out(received=got)


def udp_client(host, port, size, count="1", connected="0"):
    out(pid=os.getpid())
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    dest = (host, int(port))
    if connected == "1":
        s.connect(dest)
    got = 0
    for _ in range(int(count)):
        if connected == "1":
            s.send(b"z" * int(size))
            got += len(s.recv(65536))
        else:
            s.sendto(b"z" * int(size), dest)
            got += len(s.recvfrom(65536)[0])
    out(sent=int(size) * int(count), received=got, lport=s.getsockname()[1])
    s.close()


def udp_fanout(host, first_port, count, size):
    """One datagram to each of `count` ports: as many distinct flows."""
    out(pid=os.getpid())
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    for port in range(int(first_port), int(first_port) + int(count)):
        s.sendto(b"f" * int(size), (host, port))
    s.close()
    out(sent=int(count) * int(size))


def udp_threads_server(host, reply, datagrams, threads):
    """`threads` threads on one unconnected socket, each receiving
    datagrams/threads datagrams with recvmsg and answering each with
    sendmsg to its source: threads sharing a socket, msghdr calls."""
    import threading
    s = server_socket(host, socket.SOCK_DGRAM)
    s.bind((host, 0))
    out(pid=os.getpid(), port=s.getsockname()[1])
    got = []

    def serve(n):
        for _ in range(n):
            d, _anc, _flags, addr = s.recvmsg(65536)
            got.append(len(d))
            s.sendmsg([b"y" * int(reply)], [], 0, addr)

    ts = [threading.Thread(target=serve, args=(int(datagrams) // int(threads),)) for _ in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out(received=sum(got))


def udp_recv_noaddr(host, datagrams):
    """Receives `datagrams` datagrams on an unconnected socket with recv(),
    never asking for their source address."""
    s = server_socket(host, socket.SOCK_DGRAM)
    s.bind((host, 0))
    out(pid=os.getpid(), port=s.getsockname()[1])
    got = sum(len(s.recv(65536)) for _ in range(int(datagrams)))
    out(received=got)


MODES = {"tcp-server": tcp_server, "tcp-client": tcp_client, "tcp-many": tcp_many,
         "udp-server": udp_server, "udp-client": udp_client, "udp-fanout": udp_fanout,
         "udp-threads-server": udp_threads_server, "udp-recv-noaddr": udp_recv_noaddr}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
