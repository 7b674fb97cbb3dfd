"""Generators for netlog_blacklist tests: well-typed rules and connections
(hypothesis strategies), Ethernet frames that carry a connection, and raw
token soup for the parser fuzz."""
import random
import socket

from hypothesis import strategies as st

from .packets import ethernet, ip_packet  # noqa: F401  (ip_packet: for importers of this module)
from .packets import vxlan as vxlan_header


INT_FIELDS = ("src_port", "dst_port", "vni")
BOOL_FIELDS = ("tcp", "udp", "ipv4", "ipv6")
ADDR4_FIELDS = ("ip_saddr", "ip_daddr")
ADDR6_FIELDS = ("ip6_saddr", "ip6_daddr")
NAME_FIELDS = ("nic_name", "k8s_src_pod", "k8s_dst_pod", "k8s_src_namespace", "k8s_dst_namespace")

# small value pools so that generated rules and connections meet often
PORTS = (0, 1, 53, 80, 443, 4789, 8472, 30000, 65535)
V4 = ("10.0.0.1", "10.0.0.2", "10.1.2.3", "192.168.1.1", "127.0.0.1", "0.0.0.0")
V6 = ("::1", "fd00::1", "fd00::2", "2001:db8::1:0:0:1", "::ffff:10.0.0.1", "fe80::1")
NETS = ("10.0.0.0/8", "10.0.0.0/31", "10.1.2.3/32", "0.0.0.0/0", "192.168.0.0/16",
        "fd00::/8", "fd00::/127", "::/0", "2001:db8::/32", "::ffff:0:0/96")
NAMES = ("", "eth0", "veth1", "datakit-abc", "datakit-", "kube-system", "default", "web-1")


def _q(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def int_expr():
    return st.one_of(st.sampled_from(INT_FIELDS),
                     st.sampled_from(PORTS + (2**32, 2**40, 2**63 - 1, 16777215)).map(str))


def str_expr():
    return st.one_of(st.sampled_from(ADDR4_FIELDS + ADDR6_FIELDS + NAME_FIELDS),
                     st.sampled_from(V4 + V6 + NAMES + ("10.", "fd00:", ":1", ".1")).map(_q))


def _atoms(header_only):
    names = ADDR4_FIELDS + ADDR6_FIELDS + (("nic_name",) if header_only else NAME_FIELDS)
    string = st.one_of(st.sampled_from(names), st.sampled_from(V4 + V6 + NAMES).map(_q))
    cmp_int = st.tuples(int_expr(), st.sampled_from(("==", "!=", "<", "<=", ">", ">=")),
                        int_expr()).map(" ".join)
    cmp_str = st.tuples(string, st.sampled_from(("==", "!=")), string).map(" ".join)
    addr = st.sampled_from(ADDR4_FIELDS + ADDR6_FIELDS + tuple(_q(a) for a in V4 + V6))
    ipnet = st.tuples(st.sampled_from(NETS), addr).map(lambda t: f"ipnet_contains({_q(t[0])}, {t[1]})")
    fixes = st.tuples(st.sampled_from(("has_prefix", "has_suffix")),
                      st.sampled_from(("nic_name",) if header_only else NAME_FIELDS + ("nic_name",)),
                      st.sampled_from(NAMES + ("datakit", "-abc", "eth")).map(_q)
                      ).map(lambda t: f"{t[0]}({t[1]}, {t[2]})")
    return st.one_of(st.sampled_from(BOOL_FIELDS + ("true", "false")), cmp_int, cmp_str, ipnet, fixes)


def bool_expr(header_only=False):
    """Rule text of one well-typed boolean expression, written with
    minimal parentheses so precedence is exercised."""
    return st.recursive(
        _atoms(header_only),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(("&&", "||", "==", "!=")), inner).map(
                lambda t: f"{t[0]} {t[1]} {t[2]}" if t[1] in ("&&", "||") else f"({t[0]}) {t[1]} ({t[2]})"),
            inner.map(lambda e: f"!({e})"),
            inner.map(lambda e: f"({e})"),
        ),
        max_leaves=8)


def rules_text(header_only=False, max_statements=4):
    return st.lists(bool_expr(header_only), min_size=1, max_size=max_statements).map("\n".join)


def _packed(family, text):
    return socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)


@st.composite
def connection(draw, names=True):
    """A connection dict as tests/reference/netlog_filter_ref.py takes it."""
    family = draw(st.sampled_from((4, 6)))
    pool = V4 if family == 4 else V6
    conn = {"family": family, "proto": draw(st.sampled_from((6, 17))),
            "laddr": _packed(family, draw(st.sampled_from(pool))),
            "raddr": _packed(family, draw(st.sampled_from(pool))),
            "lport": draw(st.sampled_from(PORTS)), "rport": draw(st.sampled_from(PORTS)),
            "vni": draw(st.sampled_from((0, 1, 42, 16777215)))}
    if names:
        for n in NAME_FIELDS:
            conn[n] = draw(st.sampled_from(NAMES)).encode()
    return conn


def conn_record(conns, nf):
    """CONN_DTYPE records and their StringTable for connection dicts."""
    import numpy as np
    arr = np.zeros(len(conns), nf.CONN_DTYPE)
    names = nf.StringTable()
    for i, c in enumerate(conns):
        arr[i]["family"], arr[i]["proto"] = c["family"], c["proto"]
        arr[i]["laddr"] = c["laddr"].ljust(16, b"\0")
        arr[i]["raddr"] = c["raddr"].ljust(16, b"\0")
        arr[i]["lport"], arr[i]["rport"], arr[i]["vni"] = c["lport"], c["rport"], c["vni"]
        for field, column in nf.NAME_COLUMNS.items():
            arr[i][column] = names.intern(c.get(field, b""))
    return arr, names


# ---- frames ----

def frame_for(conn, outgoing, payload, dst_mac, src_mac, vxlan=None, ip_options=b"", tags=(),
              inner_tags=()):
    """An Ethernet frame of the connection seen from its local end: sent
    when outgoing (source = local), received otherwise. vxlan: None, or
    (outer family, vni) to wrap it in UDP 4789 between two fixed hosts;
    tags and inner_tags: VLAN (TPID, id) pairs of the frame and of the
    frame inside VXLAN."""
    if outgoing:
        src, dst, sport, dport = conn["laddr"], conn["raddr"], conn["lport"], conn["rport"]
    else:
        src, dst, sport, dport = conn["raddr"], conn["laddr"], conn["rport"], conn["lport"]
    et = 0x0800 if conn["family"] == 4 else 0x86DD
    inner = ip_packet(conn["family"], conn["proto"], src, dst, sport, dport, payload,
                      ip_options if conn["family"] == 4 else b"")
    if vxlan is None:
        return ethernet(et, inner, tags, dst=dst_mac, src=src_mac)
    ofam, vni = vxlan
    body = vxlan_header(vni, ethernet(et, inner, inner_tags))
    a, b = (_packed(4, "192.0.2.1"), _packed(4, "192.0.2.2")) if ofam == 4 else \
        (_packed(6, "2001:db8:ff::1"), _packed(6, "2001:db8:ff::2"))
    outer = ip_packet(ofam, 17, a, b, 40000, 4789, body)
    return ethernet(0x0800 if ofam == 4 else 0x86DD, outer, tags, dst=dst_mac, src=src_mac)


# ---- parser fuzz ----

FUZZ_TOKENS = (
    "tcp", "udp", "ipv4", "ipv6", "src_port", "dst_port", "ip_saddr", "ip6_daddr", "vni",
    "nic_name", "k8s_src_pod", "k8s_dst_namespace", "ipnet_contains", "has_prefix", "has_suffix",
    "true", "FALSE", "and", "nil", "`dst_port`", "`", "0", "80", "010", "0x50", "0x", "1.5", "9" * 20,
    '"10.0.0.0/8"', "'a'", '"""x\ny"""', '"\\x41"', '"\\777"', '"\\q"', '"\\u00e9"', '"', "'", '"""',
    "==", "!=", "<", "<=", ">", ">=", "!", "&&", "||", "&", "|", "=", "(", ")", ",", ";", "\n",
    " ", "\t", "#c\n", "[", "]", "+", "-", ".", ":", "é", "\x00", "\\", "`x y`",
)


def fuzz_input(rng: random.Random):
    """One parser input: token soup, or a valid rule with a few edits."""
    if rng.random() < 0.5:
        text = list(rng.choice(FUZZ_SEEDS))
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(text))
            what = rng.random()
            if what < 0.4 and text:
                del text[min(at, len(text) - 1)]
            elif what < 0.8:
                text.insert(at, rng.choice(FUZZ_TOKENS))
            else:
                text.insert(at, chr(rng.randint(0, 0x2FF)))
        return "".join(text)
    return " ".join(rng.choice(FUZZ_TOKENS) for _ in range(rng.randint(0, 14)))


# the reference file's examples (section 2.7), mutated by fuzz_input
FUZZ_SEEDS = (
    'ip_saddr == "127.0.0.1" || ip_daddr == "127.0.0.1"',
    "src_port == 80 || dst_port == 80",
    'ipnet_contains("10.0.0.0/8", ip_daddr)',
    "ipv6\n!ipv4",
    'has_prefix(k8s_src_pod, "datakit-") || has_prefix(k8s_dst_pod, "datakit-")',
    'dst_port == 443 || ip_saddr == "1.1.1.1" && src_port == 80',
    "src_port >= 30000 && src_port <= 32767",
    'ip_saddr == "10.1.1.1" &&\n    dst_port == 3306',
    'udp\nip_saddr == "1.1.1.1" && (src_port == 80 || dst_port == 80); '
    'ipnet_contains("127.0.0.0/8", ip_saddr); ipv6',
    "`dst_port` == 0x50 # hex 80",
    'has_suffix(nic_name, "0") && vni != 0 || k8s_src_namespace == "kube-system"',
)
