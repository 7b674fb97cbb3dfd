"""The network devices of the caller's network namespace, and their
changes as they come (rtnetlink, RTM_NEWLINK / RTM_DELLINK of the
RTMGRP_LINK group): a reader that follows devices learns of one at once,
before traffic crosses it, instead of at its next rescan."""
import errno
import socket
import struct

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFF_LOOPBACK = 0x8
NLMSG = struct.Struct("=IHHII")        # struct nlmsghdr: len, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")      # struct ifinfomsg: family, type, index, flags, change
DUMP_TIMEOUT_S = 5


def _open(groups=0):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        s.bind((0, groups))
    except OSError:
        s.close()
        raise
    return s


def parse(buf, into):
    """RTM_NEWLINK / RTM_DELLINK messages of buf into `into`: {ifindex:
    flags (IFF_*), or None once deleted}. Returns True at NLMSG_DONE.
    A truncated message ends the walk (netlink never splits one)."""
    off, done = 0, False
    while off + NLMSG.size <= len(buf):
        length, mtype, _flags, _seq, _pid = NLMSG.unpack_from(buf, off)
        if length < NLMSG.size or off + length > len(buf):
            break
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and length >= NLMSG.size + IFINFO.size:
            _fam, _type, index, flags, _change = IFINFO.unpack_from(buf, off + NLMSG.size)
            into[index] = flags if mtype == RTM_NEWLINK else None
        elif mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", buf, off + NLMSG.size)[0]
            if err:
                raise OSError(err, f"rtnetlink RTM_GETLINK: {errno.errorcode.get(err, err)}")
        elif mtype == NLMSG_DONE:
            done = True
        off += (length + 3) & ~3
    return done


def dump():
    """{ifindex: flags} of every device of this network namespace."""
    with _open() as s:
        s.settimeout(DUMP_TIMEOUT_S)
        # struct rtgenmsg (family AF_UNSPEC), padded to 4 bytes
        s.send(NLMSG.pack(NLMSG.size + 4, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + bytes(4))
        out = {}
        while not parse(s.recv(1 << 16), out):
            pass
    return {k: v for k, v in out.items() if v is not None}


class LinkWatch:
    """The RTMGRP_LINK subscription: fileno() is readable when devices
    appeared, changed or went away; changes() says which."""

    def __init__(self):
        self.sock = _open(RTMGRP_LINK)
        self.sock.setblocking(False)
        self.overflows = 0

    def fileno(self):
        return self.sock.fileno()

    def changes(self):
        """{ifindex: flags, or None for a device gone} since the last call,
        or None when the kernel dropped notifications (ENOBUFS: the
        subscriber fell behind): the caller then takes a fresh dump()."""
        out = {}
        while True:
            try:
                buf = self.sock.recv(1 << 16)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overflows += 1
                # what is still queued is older than the dump that follows
                self._discard()
                return None
            parse(buf, out)

    def _discard(self):
        while True:
            try:
                self.sock.recv(1 << 16)
            except (BlockingIOError, OSError):
                return

    def close(self):
        self.sock.close()
