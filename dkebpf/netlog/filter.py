"""The netlog_blacklist language: lexer, parser, type checker and printer.

A rule is statements separated by ``;`` or newlines; a packet (in fact its
connection: every field is constant over a connection) is dropped when any
statement is true. The language is the one the original collector accepted
(its Pipeline parser restricted to boolean expressions, see
``reference/datakit-original-netlog-trace-k8s.md`` section 2) with these
differences, each an improvement a user can see:

- errors name line and column and show the rule line with a caret; the
  original printed ``13:`` for line 1 column 3;
- ``ipnet_contains`` is right on its first call and refuses a network that
  does not parse (the original answered false for both);
- ``has_suffix`` and the fields ``nic_name``, ``vni``, ``k8s_src_namespace``,
  ``k8s_dst_namespace`` are new;
- an integer with a leading zero is decimal and draws a warning (the
  original read ``010`` as octal 8 and ``080`` as the float 80.0);
- newlines are allowed anywhere inside parentheses, as well as after a
  binary operator.

``&&`` binds tighter than ``||`` (the original's grammar; its documentation
says they are equal), ``!`` tighter than comparisons: ``!tcp == false`` is
``(!tcp) == false``.

String values are bytes (comparisons are byte-exact; ``\\xff`` is one
byte). The address fields are the text of the address: dotted quad for
IPv4, for IPv6 the text glibc's ``inet_ntop`` gives (lowercase, the longest
run of zero groups as ``::``, ``::ffff:1.2.3.4`` for IPv4-mapped), and
``""`` when the packet is of the other family.
"""
from __future__ import annotations

import difflib
import ipaddress
import socket
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from ..errors import FilterError

SOURCE_NAME = "netlog_blacklist"

BOOL, INT, STR = "bool", "int", "str"

# Where a field's value comes from decides where a statement can run:
# "header" fields are in every packet's headers (classic BPF can read them),
# "socket" fields are constant for a packet socket (its interface), "conn"
# fields come from Kubernetes data attached to the connection in user space.
HEADER, SOCKET, CONN = "header", "socket", "conn"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    source: str
    help: str


FIELDS = {f.name: f for f in (
    FieldSpec("tcp", BOOL, HEADER, "a TCP packet"),
    FieldSpec("udp", BOOL, HEADER, "a UDP packet"),
    FieldSpec("ipv4", BOOL, HEADER, "an IPv4 packet (the inner one for VXLAN)"),
    FieldSpec("ipv6", BOOL, HEADER, "an IPv6 packet (the inner one for VXLAN)"),
    FieldSpec("src_port", INT, HEADER, "local port"),
    FieldSpec("dst_port", INT, HEADER, "remote port"),
    FieldSpec("ip_saddr", STR, HEADER, 'local IPv4 address, "" on IPv6'),
    FieldSpec("ip_daddr", STR, HEADER, 'remote IPv4 address, "" on IPv6'),
    FieldSpec("ip6_saddr", STR, HEADER, 'local IPv6 address, "" on IPv4'),
    FieldSpec("ip6_daddr", STR, HEADER, 'remote IPv6 address, "" on IPv4'),
    FieldSpec("vni", INT, HEADER, "VXLAN network identifier, 0 when not VXLAN"),
    FieldSpec("nic_name", STR, SOCKET, "name of the interface the packet was captured on"),
    FieldSpec("k8s_src_pod", STR, CONN, "pod owning the interface's network namespace, else the local address"),
    FieldSpec("k8s_dst_pod", STR, CONN, "pod whose IP is the remote address"),
    FieldSpec("k8s_src_namespace", STR, CONN, "namespace of k8s_src_pod"),
    FieldSpec("k8s_dst_namespace", STR, CONN, "namespace of k8s_dst_pod"),
)}
ADDRESS_FIELDS = {"ip_saddr": 4, "ip_daddr": 4, "ip6_saddr": 6, "ip6_daddr": 6}

# name -> parameter types
FUNCTIONS = {
    "ipnet_contains": (STR, STR),
    "has_prefix": (STR, STR),
    "has_suffix": (STR, STR),
}
FUNCTION_USAGE = {
    "ipnet_contains": 'ipnet_contains("10.0.0.0/8", ip_daddr)',
    "has_prefix": 'has_prefix(k8s_src_pod, "datakit-")',
    "has_suffix": 'has_suffix(k8s_dst_namespace, "-system")',
}

INT_MIN, INT_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------
# Syntax tree. Every node keeps where it starts (line, col, 1-based) and how
# many characters of that line to underline in an error.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Pos:
    line: int
    col: int
    width: int = 1


@dataclass(frozen=True)
class Lit:
    value: Union[bool, int, bytes]
    pos: Pos

    @property
    def type(self):
        return BOOL if isinstance(self.value, bool) else INT if isinstance(self.value, int) else STR


@dataclass(frozen=True)
class Field:
    name: str
    pos: Pos


@dataclass(frozen=True)
class Not:
    operand: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Binary:
    op: str
    left: "Expr"
    right: "Expr"
    pos: Pos   # of the operator


@dataclass(frozen=True)
class Call:
    name: str
    args: Tuple["Expr", ...]
    pos: Pos


Expr = Union[Lit, Field, Not, Binary, Call]
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


def same_tree(a, b) -> bool:
    """Structural equality ignoring positions (printer round trips)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Lit):
        return type(a.value) is type(b.value) and a.value == b.value
    if isinstance(a, Field):
        return a.name == b.name
    if isinstance(a, Not):
        return same_tree(a.operand, b.operand)
    if isinstance(a, Binary):
        return a.op == b.op and same_tree(a.left, b.left) and same_tree(a.right, b.right)
    return a.name == b.name and len(a.args) == len(b.args) and all(
        same_tree(x, y) for x, y in zip(a.args, b.args))


def fields_of(expr) -> set:
    if isinstance(expr, Field):
        return {expr.name}
    if isinstance(expr, Not):
        return fields_of(expr.operand)
    if isinstance(expr, Binary):
        return fields_of(expr.left) | fields_of(expr.right)
    if isinstance(expr, Call):
        return set().union(*(fields_of(a) for a in expr.args))
    return set()


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class _Source:
    def __init__(self, text: str, name: str):
        self.text, self.name = text, name
        self.lines = text.split("\n")

    def error(self, pos: Pos, reason: str) -> FilterError:
        line = self.lines[pos.line - 1] if pos.line <= len(self.lines) else ""
        shown = "".join(c if c == "\t" or c.isprintable() else "?" for c in line)
        lead = "".join("\t" if c == "\t" else " " for c in shown[:pos.col - 1])
        width = max(1, min(pos.width, len(shown) - pos.col + 1))
        msg = f"{self.name}:{pos.line}:{pos.col}: {reason}\n  {shown}\n  {lead}{'^' * width}"
        return FilterError(msg, pos.line, pos.col, reason)


# --------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str        # NL SEMI IDENT INT STR TRUE FALSE OP EOF
    text: str
    value: object
    pos: Pos


_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", ",")
# What the original's Pipeline lexer also knew; named so the error can say
# what the user probably meant.
_FOREIGN = {
    "=": "'=' assigns in Pipeline scripts; compare with '=='",
    "&": "a single '&': use '&&'",
    "|": "a single '|': use '||'",
    "+": "arithmetic is not supported",
    "-": "arithmetic and negative numbers are not supported",
    "*": "arithmetic is not supported",
    "/": "arithmetic is not supported",
    "%": "arithmetic is not supported",
    "[": "lists and indexing are not supported",
    "]": "lists and indexing are not supported",
    "{": "maps are not supported",
    "}": "maps are not supported",
    ":": "':' is not supported",
    ".": "attributes and floating-point numbers are not supported",
}
_WORD_OPERATORS = {"and": "&&", "or": "||", "not": "!"}
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
                   "\\": 92, '"': 34, "'": 39}


def _ident_start(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or (ord(c) > 127 and c.isalpha())


def _ident_char(c: str) -> bool:
    return _ident_start(c) or ("0" <= c <= "9") or (ord(c) > 127 and c.isalnum())


class _Lexer:
    def __init__(self, src: _Source, warnings: List[str]):
        self.src, self.text, self.warnings = src, src.text, warnings
        self.i, self.line, self.line_start = 0, 1, 0

    def pos(self, at: int, width: int = 1) -> Pos:
        return Pos(self.line, at - self.line_start + 1, width)

    def fail(self, at: int, reason: str, width: int = 1):
        raise self.src.error(self.pos(at, width), reason)

    def tokens(self) -> List[Token]:
        out = []
        text, n = self.text, len(self.text)
        while True:
            while self.i < n and text[self.i] in " \t\r":
                self.i += 1
            if self.i >= n:
                out.append(Token("EOF", "", None, self.pos(self.i)))
                return out
            c, start = text[self.i], self.i
            if c == "#":
                while self.i < n and text[self.i] != "\n":
                    self.i += 1
            elif c == "\n":
                out.append(Token("NL", "\\n", None, self.pos(start)))
                self.i += 1
                self.line += 1
                self.line_start = self.i
            elif c == ";":
                out.append(Token("SEMI", ";", None, self.pos(start)))
                self.i += 1
            elif c in "\"'":
                out.append(self.string(c))
            elif c == "`":
                end = self.i + 1
                while end < n and text[end] not in "`\n":
                    end += 1
                if end >= n or text[end] != "`":
                    self.fail(start, "unterminated backquoted identifier")
                name = text[start + 1:end]
                if not name:
                    self.fail(start, "empty backquoted identifier", 2)
                self.i = end + 1
                out.append(Token("IDENT", name, name, self.pos(start, end + 1 - start)))
            elif "0" <= c <= "9":
                out.append(self.number())
            elif _ident_start(c):
                end = self.i
                while end < n and _ident_char(text[end]):
                    end += 1
                word = text[start:end]
                self.i = end
                low = word.lower()
                if low in ("true", "false"):
                    out.append(Token(low.upper(), word, low == "true", self.pos(start, len(word))))
                elif low in _WORD_OPERATORS:
                    self.fail(start, f"'{word}' is not an operator; use '{_WORD_OPERATORS[low]}'",
                              len(word))
                else:
                    out.append(Token("IDENT", word, word, self.pos(start, len(word))))
            else:
                for op in _OPERATORS:
                    if text.startswith(op, start):
                        out.append(Token("OP", op, None, self.pos(start, len(op))))
                        self.i += len(op)
                        break
                else:
                    if c in _FOREIGN:
                        self.fail(start, _FOREIGN[c])
                    shown = c if c.isprintable() else f"U+{ord(c):04X}"
                    self.fail(start, f"unexpected character '{shown}'")

    def number(self) -> Token:
        text, n, start = self.text, len(self.text), self.i
        end = start
        if text.startswith(("0x", "0X"), start):
            end = start + 2
            while end < n and text[end] in "0123456789abcdefABCDEF":
                end += 1
            digits, base = text[start + 2:end], 16
            if not digits:
                self.fail(start, "hexadecimal number without digits", 2)
        else:
            while end < n and "0" <= text[end] <= "9":
                end += 1
            digits, base = text[start:end], 10
        if end < n and (text[end] in ".eE" and base == 10 or text[end] == "."):
            self.fail(start, "floating-point numbers are not supported", end + 1 - start)
        if end < n and (_ident_char(text[end])):
            self.fail(end, f"unexpected '{text[end]}' after the number {text[start:end]}")
        value = int(digits, base)
        self.i = end
        if value > INT_MAX:
            self.fail(start, f"integer {text[start:end]} does not fit in 64 bits", end - start)
        if base == 10 and len(digits) > 1 and digits[0] == "0":
            self.warnings.append(self.src.error(
                self.pos(start, end - start),
                f"leading zero: {digits} is read as decimal {value} (the original collector "
                f"read it as octal)").args[0])
        return Token("INT", text[start:end], value, self.pos(start, end - start))

    def string(self, quote: str) -> Token:
        text, n, start = self.text, len(self.text), self.i
        triple = text.startswith(quote * 3, start)
        self.i += 3 if triple else 1
        out = bytearray()
        line0, line_start0 = self.line, self.line_start
        while True:
            if self.i >= n or (not triple and text[self.i] == "\n"):
                self.line, self.line_start = line0, line_start0
                self.fail(start, "unterminated string")
            c = text[self.i]
            if triple and text.startswith(quote * 3, self.i):
                self.i += 3
                break
            if not triple and c == quote:
                self.i += 1
                break
            if c == "\\":
                out += self.escape()
                continue
            if c == "\n":
                self.line += 1
                self.line_start = self.i + 1
            out += c.encode("utf-8", "surrogatepass")
            self.i += 1
        width = self.i - start if self.line == line0 else len(text[start:].split("\n", 1)[0])
        tok_pos = Pos(line0, start - line_start0 + 1, width)
        return Token("STR", text[start:self.i], bytes(out), tok_pos)

    def escape(self) -> bytes:
        text, at = self.text, self.i
        c = text[at + 1] if at + 1 < len(text) else ""
        if c in _SIMPLE_ESCAPES:
            self.i += 2
            return bytes([_SIMPLE_ESCAPES[c]])
        if "0" <= c <= "7":
            digits = text[at + 1:at + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                self.fail(at, "an octal escape is \\ and three octal digits, at most \\377", 4)
            self.i += 4
            return bytes([int(digits, 8)])
        sizes = {"x": 2, "u": 4, "U": 8}
        if c in sizes:
            digits = text[at + 2:at + 2 + sizes[c]]
            if len(digits) != sizes[c] or any(d not in "0123456789abcdefABCDEF" for d in digits):
                self.fail(at, f"\\{c} needs {sizes[c]} hexadecimal digits", 2 + sizes[c])
            self.i += 2 + sizes[c]
            if c == "x":
                return bytes([int(digits, 16)])
            cp = int(digits, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                self.fail(at, f"\\{c}{digits} is not a Unicode code point", 2 + sizes[c])
            return chr(cp).encode("utf-8")
        shown = c if c.isprintable() and c else repr(c)
        self.fail(at, f"unknown escape '\\{shown}'", 2)


# --------------------------------------------------------------------------
# Parser: recursive descent, one function per precedence level.
# --------------------------------------------------------------------------

class _Parser:
    def __init__(self, src: _Source, tokens: List[Token]):
        self.src, self.toks, self.k, self.depth = src, tokens, 0, 0

    def peek(self) -> Token:
        if self.depth:   # inside parentheses a newline is only space
            while self.toks[self.k].kind == "NL":
                self.k += 1
        return self.toks[self.k]

    def take(self) -> Token:
        t = self.peek()
        self.k += 1
        return t

    def skip_newlines(self):
        while self.toks[self.k].kind == "NL":
            self.k += 1

    def fail(self, tok: Token, reason: str):
        raise self.src.error(tok.pos, reason)

    def unexpected(self, tok: Token, wanted: str):
        prev = self.toks[self.k - 2] if self.k >= 2 else None
        if tok.kind == "OP" and tok.text in ("||", "&&") + COMPARISONS and prev and prev.kind == "NL":
            self.fail(tok, f"a line cannot start with '{tok.text}': end the previous line with it, "
                           "or put the statement in parentheses")
        what = {"EOF": "end of the rule", "NL": "end of line", "SEMI": "';'",
                "STR": "string", "INT": f"number {tok.text}"}.get(
                    tok.kind, f"'{tok.text}'")
        self.fail(tok, f"unexpected {what}, expected {wanted}")

    def program(self) -> List[Expr]:
        stmts = []
        while True:
            while self.peek().kind in ("NL", "SEMI"):
                self.take()
            if self.peek().kind == "EOF":
                return stmts
            stmts.append(self.expr())
            t = self.peek()
            if t.kind not in ("NL", "SEMI", "EOF"):
                if t.kind == "OP" and t.text == ")":
                    self.fail(t, "')' without a matching '('")
                self.unexpected(t, "an operator, ';' or a new line")

    def binary(self, ops, operand):
        left = operand()
        while self.peek().kind == "OP" and self.peek().text in ops:
            op = self.take()
            self.skip_newlines()
            left = Binary(op.text, left, operand(), op.pos)
        return left

    def expr(self):
        return self.binary(("||",), self.conjunction)

    def conjunction(self):
        return self.binary(("&&",), self.comparison)

    def comparison(self):
        return self.binary(COMPARISONS, self.unary)

    def unary(self):
        t = self.peek()
        if t.kind == "OP" and t.text == "!":
            self.take()
            return Not(self.unary(), t.pos)
        return self.primary()

    def primary(self):
        t = self.take()
        if t.kind == "INT":
            return Lit(t.value, t.pos)
        if t.kind == "STR":
            return Lit(t.value, t.pos)
        if t.kind in ("TRUE", "FALSE"):
            return Lit(t.value, t.pos)
        if t.kind == "IDENT":
            nxt = self.toks[self.k]
            if nxt.kind == "OP" and nxt.text == "(":
                return self.call(t)
            return Field(t.value, t.pos)
        if t.kind == "OP" and t.text == "(":
            self.depth += 1
            inner = self.expr()
            close = self.peek()
            if close.kind == "EOF":
                self.fail(t, "'(' is never closed")
            if not (close.kind == "OP" and close.text == ")"):
                self.unexpected(close, "an operator or ')'")
            self.depth -= 1
            self.take()
            return inner
        self.unexpected(t, "a field, a value, a function call, '!' or '('")

    def call(self, name: Token):
        opening = self.take()   # '('
        self.depth += 1
        args = []
        while True:
            t = self.peek()
            if t.kind == "OP" and t.text == ")":
                break
            if t.kind == "EOF":
                self.fail(opening, "'(' of the call is never closed")
            args.append(self.expr())
            t = self.peek()
            if t.kind == "OP" and t.text == ",":
                self.take()
                continue
            if not (t.kind == "OP" and t.text == ")"):
                if t.kind == "EOF":
                    self.fail(opening, "'(' of the call is never closed")
                self.unexpected(t, "',' or ')'")
        self.depth -= 1
        self.take()
        return Call(name.value, tuple(args), name.pos)


# --------------------------------------------------------------------------
# Type checker
# --------------------------------------------------------------------------

def canonical_address(text: bytes, family: int) -> Optional[bytes]:
    """The packed address whose canonical text (as the address fields hold
    it) is exactly `text`, or None when no address prints that way."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        s = text.decode("ascii")
        packed = socket.inet_pton(af, s)
    except (UnicodeDecodeError, OSError, ValueError):
        return None
    return packed if socket.inet_ntop(af, packed) == s else None


def parse_network(text: bytes):
    """A CIDR text as (family, packed network address, prefix length);
    host bits may be set ("10.1.2.3/8" is 10.0.0.0/8, as Go's ParseCIDR)."""
    s = text.decode("ascii")
    if "/" not in s:
        raise ValueError("needs a prefix length, e.g. 10.0.0.0/8")
    net = ipaddress.ip_network(s, strict=False)
    return net.version, net.network_address.packed, net.prefixlen


def network_contains(network: bytes, address: bytes) -> bool:
    """ipnet_contains on two constants: an address that does not parse is
    in no network; IPv4 networks hold IPv4 addresses, IPv6 ones IPv6."""
    fam, net, prefix = parse_network(network)
    try:
        ip = ipaddress.ip_address(address.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return ip.version == fam and ip in ipaddress.ip_network((net, prefix))


class _Checker:
    def __init__(self, src: _Source, warnings: List[str]):
        self.src, self.warnings = src, warnings

    def fail(self, node, reason: str):
        raise self.src.error(node.pos, reason)

    def start_pos(self, node) -> Pos:
        """Where an expression begins (a binary node keeps its operator)."""
        while isinstance(node, Binary):
            node = node.left
        return node.pos

    def type_of(self, node) -> str:
        if isinstance(node, Lit):
            return node.type
        if isinstance(node, Field):
            spec = FIELDS.get(node.name)
            if spec is None:
                near = difflib.get_close_matches(node.name, FIELDS, 1)
                hint = f"; did you mean {near[0]}?" if near else f"; fields: {', '.join(FIELDS)}"
                self.fail(node, f'unknown field "{node.name}"{hint}')
            return spec.type
        if isinstance(node, Not):
            self.expect(node.operand, BOOL, "'!' needs a boolean")
            return BOOL
        if isinstance(node, Binary):
            if node.op in ("&&", "||"):
                self.expect(node.left, BOOL, f"'{node.op}' needs booleans on both sides")
                self.expect(node.right, BOOL, f"'{node.op}' needs booleans on both sides")
                return BOOL
            lt, rt = self.type_of(node.left), self.type_of(node.right)
            if node.op in ("==", "!="):
                if lt != rt:
                    self.fail(node, f"'{node.op}' compares values of one type; here {lt} and {rt}")
                self.check_address_literal(node)
            elif lt != INT or rt != INT:
                self.fail(node, f"'{node.op}' compares integers; here {lt} and {rt}")
            return BOOL
        return self.call(node)

    def expect(self, node, want: str, reason: str):
        got = self.type_of(node)
        if got != want:
            raise self.src.error(self.start_pos(node), f"{reason}; this is {got}")

    def call(self, node: Call) -> str:
        params = FUNCTIONS.get(node.name)
        if params is None:
            near = difflib.get_close_matches(node.name, FUNCTIONS, 1)
            hint = f"; did you mean {near[0]}?" if near else f"; functions: {', '.join(FUNCTIONS)}"
            self.fail(node, f'unknown function "{node.name}"{hint}')
        if len(node.args) != len(params):
            self.fail(node, f"{node.name} takes {len(params)} arguments, got {len(node.args)}: "
                            f"{FUNCTION_USAGE[node.name]}")
        for i, (arg, want) in enumerate(zip(node.args, params)):
            self.expect(arg, want, f"argument {i + 1} of {node.name} must be {want}")
        if node.name == "ipnet_contains":
            net, addr = node.args
            if not isinstance(net, Lit):
                raise self.src.error(self.start_pos(net), "the network of ipnet_contains must be "
                                     'a string such as "10.0.0.0/8"')
            try:
                parse_network(net.value)
            except (ValueError, UnicodeDecodeError) as exc:
                self.fail(net, f"not a network: {exc}")
            if not (isinstance(addr, Lit) or (isinstance(addr, Field) and addr.name in ADDRESS_FIELDS)):
                raise self.src.error(self.start_pos(addr), "the address of ipnet_contains must be "
                                     f"one of {', '.join(ADDRESS_FIELDS)} or a string")
        return BOOL

    def check_address_literal(self, node: Binary):
        for fld, lit in ((node.left, node.right), (node.right, node.left)):
            if isinstance(fld, Field) and fld.name in ADDRESS_FIELDS and isinstance(lit, Lit) \
                    and lit.value != b"" and canonical_address(lit.value, ADDRESS_FIELDS[fld.name]) is None:
                how = ("dotted-quad IPv4 text" if ADDRESS_FIELDS[fld.name] == 4 else
                       "canonical IPv6 text (lowercase, :: for the longest run of zeros)")
                self.warnings.append(self.src.error(
                    lit.pos, f"{fld.name} never equals {_quote(lit.value)}: it holds {how}").args[0])

    def statement(self, node):
        t = self.type_of(node)
        if t != BOOL:
            raise self.src.error(self.start_pos(node), f"a statement must be a boolean; this is {t}")


# --------------------------------------------------------------------------
# Printer
# --------------------------------------------------------------------------

_NAMED_ESCAPES = {v: k for k, v in _SIMPLE_ESCAPES.items() if k not in "'\"\\"}


def _quote(value: bytes) -> str:
    out = []
    for b in value:
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif b in _NAMED_ESCAPES:
            out.append("\\" + _NAMED_ESCAPES[b])
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def format_expr(node, top: bool = True) -> str:
    """The expression with every operation in explicit parentheses."""
    if isinstance(node, Lit):
        if isinstance(node.value, bool):
            return "true" if node.value else "false"
        if isinstance(node.value, int):
            return str(node.value)
        return _quote(node.value)
    if isinstance(node, Field):
        return node.name
    if isinstance(node, Not):
        return "!" + format_expr(node.operand, False)
    if isinstance(node, Call):
        return f"{node.name}({', '.join(format_expr(a) for a in node.args)})"
    text = f"{format_expr(node.left, False)} {node.op} {format_expr(node.right, False)}"
    return text if top else f"({text})"


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Statement:
    index: int          # 0-based, in the order written
    expr: Expr
    source: str         # the statement's text as printed

    @property
    def fields(self) -> set:
        return fields_of(self.expr)

    @property
    def needs_connection(self) -> bool:
        """Reads Kubernetes data, or asks about the text of an address (no
        classic BPF for that): evaluated per connection in user space."""
        return any(FIELDS[f].source == CONN for f in self.fields) or _text_on_address(self.expr)


def _text_on_address(node) -> bool:
    if isinstance(node, Call):
        if node.name in ("has_prefix", "has_suffix") and any(
                isinstance(a, Field) and a.name in ADDRESS_FIELDS for a in node.args):
            return True
        return any(_text_on_address(a) for a in node.args)
    if isinstance(node, Binary):
        return _text_on_address(node.left) or _text_on_address(node.right)
    if isinstance(node, Not):
        return _text_on_address(node.operand)
    return False


@dataclass(frozen=True)
class Rules:
    statements: Tuple[Statement, ...]
    warnings: Tuple[str, ...]

    def format(self) -> str:
        return "\n".join(s.source for s in self.statements)


def parse_rules(text: str, name: str = SOURCE_NAME) -> Rules:
    """Lex, parse and type-check; raises FilterError. Warnings (leading
    zeros, address literals no packet can have) are returned, not raised."""
    src = _Source(text, name)
    warnings: List[str] = []
    tokens = _Lexer(src, warnings).tokens()
    exprs = _Parser(src, tokens).program()
    checker = _Checker(src, warnings)
    for e in exprs:
        checker.statement(e)
    return Rules(tuple(Statement(i, e, format_expr(e)) for i, e in enumerate(exprs)), tuple(warnings))
