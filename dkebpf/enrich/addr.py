"""Address columns: 16-byte kernel addresses to text, and IP types.

Work is done once per distinct address (np.unique), then spread to rows
with pyarrow's take: rows can be many, distinct addresses are few."""
import ipaddress
import socket

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


_UNSPEC4 = "0.0.0.0"
_UNSPEC6 = "::"


def _fmt(raw, family):
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def format_addrs(addrs, families):
    """addrs: numpy array of 16-byte void records (IPv4 in the first four
    bytes); families: uint8 array of 4/6. Returns a pa.StringArray."""
    n = len(addrs)
    if n == 0:
        return pa.array([], pa.string())
    # distinct (family, address) pairs: 17-byte rows
    combo = np.empty((n, 17), dtype=np.uint8)
    combo[:, :16] = np.frombuffer(np.ascontiguousarray(addrs).tobytes(), dtype=np.uint8).reshape(n, 16)
    combo[:, 16] = families
    view = np.ascontiguousarray(combo).view(np.dtype((np.void, 17))).ravel()
    uniq, inverse = np.unique(view, return_inverse=True)
    texts = []
    for u in uniq:
        b = bytes(u)
        texts.append(_fmt(b[:16], b[16]))
    return pa.array(texts, pa.string()).take(pa.array(inverse.ravel().astype(np.int32)))


def ip_type(text):
    """private / loopback / multicast / other, as the original collector
    classifies (IPv4-mapped IPv6 already folded to IPv4 by the kernel side)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "other"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or ip.is_link_local:
        return "private"
    return "other"


def ip_types(texts):
    """Vectorised ip_type over a string array (work per distinct value)."""
    if len(texts) == 0:
        return pa.array([], pa.string())
    enc = pc.dictionary_encode(texts)
    dictionary = enc.dictionary.to_pylist()
    types = pa.array([ip_type(t) for t in dictionary], pa.string())
    return types.take(enc.indices)


class LocalAddressResolver:
    """The source address the host would use to reach a peer, for flows of
    unconnected UDP sockets bound to the wildcard address (the socket does
    not know its source address; the route does). A UDP connect() sends no
    packet. Results are cached per peer, bounded."""

    def __init__(self, max_entries=4096):
        self._cache = {}
        self._max = max_entries

    def resolve(self, peer, family):
        key = (peer, family)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        fam = socket.AF_INET6 if family == 6 else socket.AF_INET
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.connect((peer, 9))
                local = s.getsockname()[0]
        except OSError:
            local = _UNSPEC6 if family == 6 else _UNSPEC4
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = local
        return local

    def fill_unspecified(self, local, remote, families):
        """Replace wildcard local addresses with the routed source address."""
        mask = pc.or_(pc.equal(local, _UNSPEC4), pc.equal(local, _UNSPEC6))
        if not pc.any(mask).as_py():
            return local
        idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        peers = remote.take(pa.array(idx)).to_pylist()
        fams = np.asarray(families)[idx]
        repl = [self.resolve(r, int(f)) for r, f in zip(peers, fams)]
        return pc.replace_with_mask(local, mask, pa.array(repl, pa.string()))
