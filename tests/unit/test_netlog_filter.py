"""netlog_blacklist: the language (lexer, parser, checker, printer), the
per-connection Cython evaluator against the pure-Python reference, a small
parser fuzz, the `dkebpf netlog-filter` command and the option plumbing.
The classic BPF program is checked on the kernel (tests/kernel)."""
import io
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf.errors import FilterError
from dkebpf.netlog.filter import format_expr, parse_rules, same_tree
from dkebpf.netlog.filter_cbpf import socket_filter
from dkebpf.netlog.filter_cli import main as netlog_filter
from reference.netlog_filter_ref import address_text, first_match
from support.netlog_filter_gen import conn_record, connection, fuzz_input, rules_text


def printed(text):
    return parse_rules(text).format()


def error(text):
    with pytest.raises(FilterError) as info:
        parse_rules(text)
    return str(info.value)


# ---- the reference file's examples (section 2.7) ----

@pytest.mark.parametrize("text, want", [
    ('ip_saddr == "127.0.0.1" || ip_daddr == "127.0.0.1"',
     '(ip_saddr == "127.0.0.1") || (ip_daddr == "127.0.0.1")'),
    ("dst_port == 6379", "dst_port == 6379"),
    ('ipnet_contains("10.0.0.0/8", ip_daddr)', 'ipnet_contains("10.0.0.0/8", ip_daddr)'),
    ("ipv6", "ipv6"),
    ('has_prefix(k8s_src_pod, "datakit-") || has_prefix(k8s_dst_pod, "datakit-")',
     'has_prefix(k8s_src_pod, "datakit-") || has_prefix(k8s_dst_pod, "datakit-")'),
    # && binds tighter than || (the original's grammar, not its doc's table)
    ('dst_port == 443 || ip_saddr == "1.1.1.1" && src_port == 80',
     '(dst_port == 443) || ((ip_saddr == "1.1.1.1") && (src_port == 80))'),
    ("tcp || udp && ipv4 || ipv6", "(tcp || (udp && ipv4)) || ipv6"),
    ("!tcp == false", "!tcp == false"),
    ("!(tcp == false)", "!(tcp == false)"),
    ("src_port >= 30000 && src_port <= 32767", "(src_port >= 30000) && (src_port <= 32767)"),
    ('ip_saddr == "10.1.1.1" &&\n    dst_port == 3306', '(ip_saddr == "10.1.1.1") && (dst_port == 3306)'),
    ('udp\nip_saddr == "1.1.1.1" && (src_port == 80 || dst_port == 80); '
     'ipnet_contains("127.0.0.0/8", ip_saddr); ipv6',
     'udp\n(ip_saddr == "1.1.1.1") && ((src_port == 80) || (dst_port == 80))\n'
     'ipnet_contains("127.0.0.0/8", ip_saddr)\nipv6'),
    ("`dst_port` == 0x50 # hex 80", "dst_port == 80"),
    ("# only a comment\n\n;;\n", ""),
    ("(dst_port == 1\n || tcp)", "(dst_port == 1) || tcp"),
    ('has_prefix(\n  k8s_src_pod,\n  "a",\n)', 'has_prefix(k8s_src_pod, "a")'),
    ("TRUE; False", "true\nfalse"),
    ("'''two\nlines''' == nic_name", '"two\\nlines" == nic_name'),
    (r'nic_name == "\x41\101\u00e9\t\"\'"', r'nic_name == "AA\xc3\xa9\t\"' + "'\""),
])
def test_examples_parse_and_print(text, want):
    assert printed(text) == want


def test_where_statements_run():
    rules = parse_rules('dst_port == 443 || ip_saddr == "1.1.1.1" && src_port == 80\n'
                        'has_prefix(k8s_src_pod, "datakit-")\n'
                        'has_prefix(ip_saddr, "10.")\n'
                        'nic_name == "eth0" && ipnet_contains("fd00::/8", ip6_daddr)')
    placed = socket_filter(rules, "eth0")
    assert [s.index for s in placed.in_kernel] == [0, 3]
    assert [s.index for s in placed.per_connection] == [1, 2]


# ---- errors: position, the rule line and a caret; never a traceback ----

@pytest.mark.parametrize("text, want", [
    ('dst_port == "80"', "netlog_blacklist:1:10: '==' compares values of one type; here int and str\n"
                         '  dst_port == "80"\n'
                         "           ^^"),
    ('tcp\nip_src == "1.1.1.1"', 'netlog_blacklist:2:1: unknown field "ip_src"; did you mean ip_saddr?\n'
                                 '  ip_src == "1.1.1.1"\n'
                                 "  ^^^^^^"),
    ("dst_port == 80 and src_port == 1", "netlog_blacklist:1:16: 'and' is not an operator; use '&&'\n"
                                         "  dst_port == 80 and src_port == 1\n"
                                         "                 ^^^"),
    ("dst_port in [80, 443]", "netlog_blacklist:1:13: lists and indexing are not supported\n"
                              "  dst_port in [80, 443]\n"
                              "              ^"),
    ("dst_port == 8.0", "netlog_blacklist:1:13: floating-point numbers are not supported\n"
                        "  dst_port == 8.0\n"
                        "              ^^"),
    ("\tdst_port == 1\n|| tcp", "netlog_blacklist:2:1: a line cannot start with '||': end the previous "
                                "line with it, or put the statement in parentheses\n"
                                "  || tcp\n"
                                "  ^^"),
    ("\tx == 'abc", "netlog_blacklist:1:7: unterminated string\n"
                    "  \tx == 'abc\n"
                    "  \t     ^"),
])
def test_error_messages(text, want):
    assert error(text) == want


@pytest.mark.parametrize("text, reason", [
    ("(tcp", "'(' is never closed"),
    ("tcp)", "')' without a matching '('"),
    ("tcp tcp", "unexpected 'tcp', expected an operator, ';' or a new line"),
    ("tcp & udp", "a single '&': use '&&'"),
    ("tcp | udp", "a single '|': use '||'"),
    ("src_port = 1", "'=' assigns in Pipeline scripts; compare with '=='"),
    ("src_port == -1", "arithmetic and negative numbers are not supported"),
    ("dst_port", "a statement must be a boolean; this is int"),
    ("!dst_port", "'!' needs a boolean; this is int"),
    ("tcp && 1", "'&&' needs booleans on both sides; this is int"),
    ('ip_saddr < "1"', "'<' compares integers; here str and str"),
    ("has_prefix(k8s_src_pod)", 'has_prefix takes 2 arguments, got 1: has_prefix(k8s_src_pod, "datakit-")'),
    ('has_prefix(k8s_src_pod, 1)', "argument 2 of has_prefix must be str; this is int"),
    ('regex(k8s_src_pod, "a")',
     'unknown function "regex"; functions: ipnet_contains, has_prefix, has_suffix'),
    ('has_prfix(k8s_src_pod, "a")', 'unknown function "has_prfix"; did you mean has_prefix?'),
    ('ipnet_contains("10.0.0.0/33", ip_saddr)', "not a network: '10.0.0.0/33' does not appear to be an "
                                                 "IPv4 or IPv6 network"),
    ('ipnet_contains("10.0.0.1", ip_saddr)', "not a network: needs a prefix length, e.g. 10.0.0.0/8"),
    ('ipnet_contains(k8s_src_pod, ip_saddr)',
     'the network of ipnet_contains must be a string such as "10.0.0.0/8"'),
    ('ipnet_contains("10.0.0.0/8", k8s_src_pod)', "the address of ipnet_contains must be one of ip_saddr, "
                                                   "ip_daddr, ip6_saddr, ip6_daddr or a string"),
    ("dst_port == 99999999999999999999", "integer 99999999999999999999 does not fit in 64 bits"),
    ("dst_port == 0x", "hexadecimal number without digits"),
    ("dst_port == 80x", "unexpected 'x' after the number 80"),
    (r'nic_name == "\q"', "unknown escape '\\q'"),
    (r'nic_name == "\xg0"', "\\x needs 2 hexadecimal digits"),
    (r'nic_name == "\400"', "an octal escape is \\ and three octal digits, at most \\377"),
    (r'nic_name == "\UFFFFFFFF"', "\\UFFFFFFFF is not a Unicode code point"),
    ("`dst_port == 1", "unterminated backquoted identifier"),
    ("`` == 1", "empty backquoted identifier"),
    ('"""never closed', "unterminated string"),
    ("tcp @", "unexpected character '@'"),
    ("tcp ||", "unexpected end of the rule, expected a field, a value, a function call, '!' or '('"),
    ("has_prefix(nic_name, \"a\"", "'(' of the call is never closed"),
])
def test_error_reasons(text, reason):
    with pytest.raises(FilterError) as info:
        parse_rules(text)
    assert info.value.reason == reason
    first, line, caret = str(info.value).split("\n")
    assert first == f"netlog_blacklist:{info.value.line}:{info.value.col}: {reason}"
    assert line.startswith("  ") and caret.lstrip(" \t").startswith("^")


def test_warnings():
    rules = parse_rules('dst_port == 010\nip6_daddr == "2001:DB8::1"\nip_saddr == "010.0.0.1"')
    assert rules.format() == 'dst_port == 10\nip6_daddr == "2001:DB8::1"\nip_saddr == "010.0.0.1"'
    leading, upper, octal = rules.warnings
    assert leading.startswith("netlog_blacklist:1:13: leading zero: 010 is read as decimal 10")
    assert upper.startswith('netlog_blacklist:2:14: ip6_daddr never equals "2001:DB8::1": it holds '
                            "canonical IPv6 text")
    assert octal.startswith('netlog_blacklist:3:13: ip_saddr never equals "010.0.0.1"')


# ---- printer round trip and evaluator agreement (hypothesis) ----

@settings(max_examples=300, deadline=None)
@given(rules_text())
def test_printed_rules_parse_back_to_the_same_tree(text):
    rules = parse_rules(text)
    again = parse_rules(rules.format())
    assert len(again.statements) == len(rules.statements)
    for a, b in zip(rules.statements, again.statements):
        assert same_tree(a.expr, b.expr), (format_expr(a.expr), format_expr(b.expr))


@settings(max_examples=300, deadline=None)
@given(rules_text(), st.lists(connection(), min_size=1, max_size=8))
def test_cython_evaluator_agrees_with_reference(text, conns):
    from dkebpf import _netlog_filter as nf
    rules = parse_rules(text)
    arr, names = conn_record(conns, nf)
    got = nf.ConnFilter(rules.statements).verdicts(arr, names)
    want = [first_match(rules.statements, c) for c in conns]
    assert got.tolist() == want


def test_reference_address_text_is_inet_ntop():
    rng = random.Random(12)
    for _ in range(20000):
        b = bytes(rng.choice((0, 0, 0, 1, 0xFF)) if rng.random() < 0.8 else rng.randrange(256)
                  for _ in range(16))
        assert address_text(6, b) == socket.inet_ntop(socket.AF_INET6, b)


def test_ipnet_contains_is_right_on_the_first_call():
    from dkebpf import _netlog_filter as nf
    rules = parse_rules('ipnet_contains("10.0.0.0/8", ip_daddr)')
    conn = {"family": 4, "proto": 6, "laddr": bytes(4), "raddr": bytes([10, 9, 8, 7]),
            "lport": 1, "rport": 2, "vni": 0}
    arr, names = conn_record([conn], nf)
    assert nf.ConnFilter(rules.statements).verdicts(arr, names).tolist() == [0]


def test_string_table():
    from dkebpf import _netlog_filter as nf
    t = nf.StringTable()
    ids = [t.intern(f"pod-{i}") for i in range(5000)]
    assert ids == list(range(1, 5001)) and t.intern("pod-7") == 8 and t.intern("") == 0
    assert t.get(8) == b"pod-7" and t.get(0) == b"" and len(t) == 5001


# ---- the parser fuzz (the long one is perf/fuzz_netlog_filter.py) ----

def check_no_crash(text):
    """parse_rules either returns or raises FilterError with a position
    inside the text and a caret line; anything else is a bug."""
    try:
        rules = parse_rules(text)
    except FilterError as exc:
        lines = text.split("\n")
        assert 1 <= exc.line <= len(lines), (text, exc.line)
        assert 1 <= exc.col <= len(lines[exc.line - 1]) + 1, (text, exc.col)
        assert str(exc).count("\n") == 2 and "^" in str(exc).split("\n")[2]
        return False
    again = parse_rules(rules.format())
    assert all(same_tree(a.expr, b.expr) for a, b in zip(rules.statements, again.statements))
    return True


def test_parser_fuzz_small():
    rng = random.Random(1212)
    ok = sum(check_no_crash(fuzz_input(rng)) for _ in range(20000))
    assert 100 < ok < 20000   # both paths were exercised


# ---- dkebpf netlog-filter ----

def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    rc = netlog_filter(list(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_prints_and_matches():
    rule = 'dst_port == 443 || ip_saddr == "1.1.1.1" && src_port == 80\nhas_prefix(k8s_dst_pod, "db-")'
    rc, out, err = run_cli(rule)
    assert rc == 0 and err == ""
    assert out == ('1: (dst_port == 443) || ((ip_saddr == "1.1.1.1") && (src_port == 80))'
                   "    # packet socket (classic BPF)\n"
                   '2: has_prefix(k8s_dst_pod, "db-")    # per connection\n')
    rc, out, _ = run_cli(rule, "--match", "ip_saddr=1.1.1.1", "--match", "src_port=80")
    assert rc == 0 and out.endswith('drop: statement 1 matches: (dst_port == 443) || '
                                    '((ip_saddr == "1.1.1.1") && (src_port == 80))\n')
    rc, out, _ = run_cli(rule, "--match", "ip_saddr=1.1.1.1", "--match", "src_port=81")
    assert rc == 0 and out.endswith("keep: no statement matches\n")
    rc, out, _ = run_cli(rule, "--match", "k8s_dst_pod=db-0", "--match", "ipv6=true")
    assert rc == 0 and out.endswith('drop: statement 2 matches: has_prefix(k8s_dst_pod, "db-")\n')


@pytest.mark.parametrize("argv, want", [
    (("ip_src == 1",), 'netlog_blacklist:1:1: unknown field "ip_src"; did you mean ip_saddr?'),
    (("tcp", "--match", "dst_port=abc"), 'invalid --match "dst_port=abc": an integer'),
    (("tcp", "--match", "dst_port=70000"), 'invalid --match "dst_port=70000": 0..65535'),
    (("tcp", "--match", "port=1"), 'invalid --match "port=1": write FIELD=VALUE with FIELD one of tcp,'),
    (("tcp", "--match", "ip6_saddr=::1", "--match", "ipv4=true"),
     "invalid --match: the fields given ask for both IPv4 and IPv6"),
    (("tcp", "--match", "ip_saddr=::1"), 'invalid --match "ip_saddr=::1": an IPv4 address'),
    (("tcp", "--match", "tcp=yes"), 'invalid --match "tcp=yes": true or false'),
])
def test_cli_errors_exit_2(argv, want):
    rc, out, err = run_cli(*argv)
    assert rc == 2 and out == "" and err.startswith(want) and "Traceback" not in err


def test_cli_through_main_and_stdin(monkeypatch, capsys):
    from dkebpf.cli import main
    monkeypatch.setattr("sys.stdin", io.StringIO("udp; tcp && dst_port == 010\n"))
    assert main(["netlog-filter", "-", "--match", "dst_port=10"]) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith("drop: statement 2 matches: tcp && (dst_port == 10)\n")
    assert captured.err.startswith("warning: netlog_blacklist:1:25: leading zero")
    assert main(["netlog-filter", "tcp ||"]) == 2


# ---- the option: DKE_NETLOG_NET_FILTER, ENV_INPUT_EBPF_NETLOG_BLACKLIST, ebpf.conf ----

RULE = 'dst_port == 443 ||\n  ip_saddr == "1.1.1.1"'


@pytest.mark.parametrize("env", ["DKE_NETLOG_NET_FILTER", "ENV_INPUT_EBPF_NETLOG_BLACKLIST",
                                 "ENV_NETLOG_BLACKLIST"])
def test_option_from_environment(env):
    from dkebpf.config import load_config
    cfg = load_config(["--enabled", "bpf-netlog"], {env: RULE})
    assert cfg.netlog_blacklist == RULE
    assert parse_rules(cfg.netlog_blacklist).format() == '(dst_port == 443) || (ip_saddr == "1.1.1.1")'


def test_option_from_ebpf_conf(tmp_path):
    from dkebpf.config import load_config
    conf = tmp_path / "ebpf.conf"
    conf.write_text("[[inputs.ebpf]]\n  enabled_plugins = [\"bpf-netlog\"]\n"
                    f"  netlog_blacklist = '''\n{RULE}\n'''\n")
    cfg = load_config(["--config", str(conf)], {})
    assert cfg.netlog_blacklist == RULE
