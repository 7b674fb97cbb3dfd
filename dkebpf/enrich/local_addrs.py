"""The addresses of this network namespace (the collector's), without
netlink or `ip`: IPv4 from the SIOCGIFCONF ioctl (every address of every
interface, secondaries included, each under its label), IPv6 from
/proc/self/net/if_inet6. A few syscalls: cheap enough to re-read every
interval.

Addresses are returned as 17-byte keys, family byte then the 16 address
bytes (IPv4 in the first 4, as in dkebpf's records), so that np.isin can
test a column of addresses against them (address_keys())."""
import array
import fcntl
import socket
import struct

import numpy as np

SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40        # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union
_IFCONF = "iL"          # struct ifconf: int ifc_len, (padding), char *ifc_buf


def _ipv4_addrs():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        n = 64
        while True:
            buf = array.array("B", bytes(n * _IFREQ_SIZE))
            ptr, _ = buf.buffer_info()
            res = fcntl.ioctl(s.fileno(), SIOCGIFCONF, struct.pack(_IFCONF, n * _IFREQ_SIZE, ptr))
            used = struct.unpack(_IFCONF, res)[0]
            if used < n * _IFREQ_SIZE:     # a full buffer may have been cut short: retry bigger
                break
            n *= 2
    data = buf.tobytes()
    # sockaddr_in after the name: family (2), port (2), address (4)
    return [data[off + 20:off + 24] for off in range(0, used, _IFREQ_SIZE)]


def _ipv6_addrs(path="/proc/self/net/if_inet6"):
    try:
        with open(path) as fh:
            return [bytes.fromhex(line.split()[0]) for line in fh if line.strip()]
    except FileNotFoundError:      # IPv6 disabled
        return []


def address_keys(family, addrs):
    """family (uint8 4/6) and addrs (V16) columns -> S17 keys, family first."""
    n = len(family)
    buf = np.empty((n, 17), np.uint8)
    buf[:, 0] = family
    buf[:, 1:] = np.ascontiguousarray(addrs).view(np.uint8).reshape(n, 16)
    return buf.view("S17").ravel()


def local_address_keys():
    """This namespace's addresses as sorted S17 keys (see address_keys)."""
    v4, v6 = _ipv4_addrs(), _ipv6_addrs()
    family = np.array([4] * len(v4) + [6] * len(v6), np.uint8)
    addrs = np.array([a.ljust(16, b"\0") for a in v4 + v6], "V16") if len(family) else np.empty(0, "V16")
    return np.unique(address_keys(family, addrs))
