"""`dkebpf netlog-filter RULES [--match field=value ...]`: check a
netlog_blacklist rule, print it with explicit parentheses and where each
statement runs; with --match, say whether a connection with those fields
would be dropped, by the same evaluator the collector uses per connection."""
import argparse
import ipaddress
import sys

from ..errors import ConfigError
from ..pairs import parse_pairs
from .filter import ADDRESS_FIELDS, BOOL, FIELDS, INT, parse_rules
from .filter_cbpf import socket_filter

USAGE = "dkebpf netlog-filter RULES [--match field=value ...]"


def _connection(pairs):
    """One CONN_DTYPE record and its StringTable from field=value pairs.
    Unset: TCP, IPv4 (IPv6 when an ip6_ field or ipv6=true is given),
    addresses all zero, ports and vni 0, names empty."""
    from .. import _netlog_filter as nf
    import numpy as np

    given = parse_pairs(pairs, "--match", FIELDS, "FIELD=VALUE")
    conn = np.zeros(1, nf.CONN_DTYPE)
    names = nf.StringTable()

    def bad(name, allowed):
        return ConfigError(f'invalid --match "{name}={given[name]}": {allowed}')

    flags = {}
    for name, value in given.items():
        spec = FIELDS[name]
        if spec.type == BOOL:
            if value.lower() not in ("true", "false"):
                raise bad(name, "true or false")
            flags[name] = value.lower() == "true"
        elif spec.type == INT:
            try:
                number = int(value, 0)
            except ValueError:
                raise bad(name, "an integer") from None
            top = 0xFFFF if name.endswith("_port") else 0xFFFFFF
            if not 0 <= number <= top:
                raise bad(name, f"0..{top}")
            conn[{"src_port": "lport", "dst_port": "rport", "vni": "vni"}[name]] = number
        elif name in nf.NAME_COLUMNS:
            conn[nf.NAME_COLUMNS[name]] = names.intern(value)
    families = {ADDRESS_FIELDS[n] for n in given if n in ADDRESS_FIELDS}
    protos = set()
    for flag, chosen, yes, no in (("ipv4", families, 4, 6), ("ipv6", families, 6, 4),
                                  ("tcp", protos, 6, 17), ("udp", protos, 17, 6)):
        if flag in flags:
            chosen.add(yes if flags[flag] else no)
    if len(families) > 1:
        raise ConfigError("invalid --match: the fields given ask for both IPv4 and IPv6")
    if len(protos) > 1:
        raise ConfigError("invalid --match: the fields given ask for both TCP and UDP")
    family = families.pop() if families else 4
    conn["family"] = family
    conn["proto"] = protos.pop() if protos else 6
    for name in ADDRESS_FIELDS:
        if name in given:
            try:
                packed = ipaddress.ip_address(given[name]).packed
            except ValueError:
                packed = b""
            if len(packed) != (4 if family == 4 else 16):
                raise bad(name, f"an IPv{family} address")
            column = "laddr" if name in ("ip_saddr", "ip6_saddr") else "raddr"
            conn[column] = packed.ljust(16, b"\0")
    return conn, names


def main(argv, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    parser = argparse.ArgumentParser(prog="dkebpf netlog-filter", usage=USAGE, description=(
        "Check a netlog_blacklist rule (RULES, or - to read it from stdin) and print it with "
        "explicit parentheses; with --match, whether a connection with these fields is dropped."))
    parser.add_argument("rules")
    parser.add_argument("--match", action="append", default=[], metavar="FIELD=VALUE",
                        help="a field of the connection, e.g. dst_port=443 or ip_daddr=10.1.2.3; "
                             "unset: tcp, ipv4, zero addresses and ports, empty names")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse printed the usage error
        return 2 if exc.code else 0
    text = sys.stdin.read() if args.rules == "-" else args.rules
    try:
        rules = parse_rules(text)
        conn = _connection(args.match) if args.match else None
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    for warning in rules.warnings:
        err.write(f"warning: {warning}\n")
    placed = socket_filter(rules)
    in_kernel = {st.index for st in placed.in_kernel}
    for st in rules.statements:
        where = "packet socket (classic BPF)" if st.index in in_kernel else "per connection"
        out.write(f"{st.index + 1}: {st.source}    # {where}\n")
    if not rules.statements:
        out.write("# no statements: nothing is dropped\n")
    if conn is not None:
        from .._netlog_filter import ConnFilter
        hit = int(ConnFilter(rules.statements).verdicts(*conn)[0])
        if hit < 0:
            out.write("keep: no statement matches\n")
        else:
            out.write(f"drop: statement {hit + 1} matches: {rules.statements[hit].source}\n")
    return 0
