"""Configuration of ``dkebpf run``.

Three sources, highest first:

1. command-line flags -- exactly those DataKit passes to ``datakit-ebpf run``
   (see ``reference/datakit-contract.md``) plus our own ``--output``,
   ``--spool-dir`` and ``--spool-max-bytes``;
2. environment -- the ``ENV_INPUT_EBPF_*`` variables of the DataKit docs and
   the ``DKE_*``/``HOST_*`` variables DataKit hands to its child;
3. the file named by ``--config``, in either of two shapes:

   a. a datakit-ebpf TOML with the options at top level, spelled as the
      option name (``enabled_plugins``) or as the flag with ``-`` or ``_``
      (``enabled``, ``datakit-apiserver``, ``datakit_apiserver``);
   b. DataKit's ``ebpf.conf``: one ``[[inputs.ebpf]]`` table with the same
      keys, DataKit's own keys (``daemon``, ``name``, ``cmd``, ``envs``,
      ``election``: accepted, ignored), ``args`` (a list of flags, read at
      file precedence, below the keys of the same table, as DataKit appends
      the keys after ``args``) and ``[inputs.ebpf.tags]``.

One table, ``OPTIONS``, names every option once with its flags, environment
variables, parser and (through the ``Config`` field) its default; argparse,
the environment reader and the file reader are all driven by it. Nothing here
looks at the running kernel: the result is a plain, deterministic ``Config``.

Every bad value raises ``ConfigError`` with one line::

    invalid <option as the user wrote it> "<value>": <what is allowed>

where the option is a flag (``--interval``), an environment variable
(``ENV_INPUT_EBPF_INTERVAL``) or a file key with its file
(``interval (/etc/ebpf.conf)``, ``--interval (args in /etc/ebpf.conf)``).
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import socket
import sys
from dataclasses import MISSING, dataclass, field, fields
from fractions import Fraction
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from .errors import ConfigError
from .plugins import L7NET, PLUGIN, names as _plugin_names

__all__ = [
    "Config",
    "ConfigArgumentParser",
    "InvalidValue",
    "OPTIONS",
    "PLUGINS",
    "L7NET_PROTOCOLS",
    "add_run_arguments",
    "build_run_parser",
    "load_config",
    "options_without_effect",
    "parse_bytes",
    "parse_duration",
    "parse_rate",
]

# the names --enabled and --l7net-enabled accept, from the plugin table
# (dkebpf/plugins/__init__.py), implemented or not: the agent warns about a
# known plugin that is not built yet and runs the others
PLUGINS = _plugin_names(PLUGIN)
L7NET_PROTOCOLS = _plugin_names(L7NET)
LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning",
              "warning": "warning", "error": "error"}
# The original hard-codes these two as never traced (doc: "do not need to be
# set"); we put them in the tuple so consumers need no second rule.
ALWAYS_UNTRACED = ("datakit", "datakit-ebpf")
DEFAULT_SA_TOKEN = "/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_SA_CA = "/run/secrets/kubernetes.io/serviceaccount/ca.crt"
# The original's default; DataKit relies on it when its args have no apiserver.
DEFAULT_APISERVER = "http://0.0.0.0:9529"
# DataKit starts <install>/externals/datakit-ebpf; started under that name the
# collector keeps its log and pidfile beside it, as the original does.
LAUNCHER_NAME = "datakit-ebpf"
# Flags other DataKit versions pass to datakit-ebpf that this build has no use
# for: accepted with the value that follows, if any, and named in the start-up
# warning. A name ending in "-" stands for a family of flags.
FOREIGN_FLAGS = ("--netlog-fallback-", "--netlog-shared-blocks", "--netlog-l7log-",
                 "--network-path-", "--trace-uprobe", "--kubeconfig", "--operator-url")


class InvalidValue(ConfigError, ValueError):
    """Raised by the public parsers (``parse_duration`` ...): both a
    ``ConfigError`` for the CLI and a ``ValueError`` for other callers."""


class _Bad(Exception):
    """A parser's refusal; ``allowed`` says what would have been accepted.
    The caller adds the option label and the value."""

    def __init__(self, allowed: str):
        super().__init__(allowed)
        self.allowed = allowed


def _show(raw: Any) -> str:
    """A value as the user wrote it, on one line, safe inside quotes."""
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, (list, tuple)):
        text = ",".join(_show_plain(x) for x in raw)
    elif isinstance(raw, dict):
        text = ",".join(f"{k}={_show_plain(v)}" for k, v in raw.items())
    else:
        text = str(raw)
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 200 else text[:197] + "..."


def _show_plain(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def _invalid(label: str, raw: Any, allowed: str) -> ConfigError:
    return ConfigError(f'invalid {label} "{_show(raw)}": {allowed}')


# --------------------------------------------------------------------------
# Value parsers. Each takes what a flag or env var gives (str) or what TOML
# gives (str, int, float, bool, list, dict) and returns the parsed value or
# raises _Bad.
# --------------------------------------------------------------------------

_DECIMAL = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

# time.ParseDuration units (Go accepts both micro signs).
_DURATION_UNITS_NS = {
    "ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3,
    "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
}
_DURATION_ALLOWED = ("a Go duration such as 60s, 1m30s, 1.5h or 500ms "
                     "(units ns, us, ms, s, m, h; a bare number is seconds)")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def _seconds_ns(seconds: Fraction) -> int:
    ns = int(seconds * 10**9)  # int() truncates toward zero, as Go does
    if abs(ns) > _MAX_NS:
        raise _Bad(_DURATION_ALLOWED + "; at most 2562047h47m16s")
    return ns


def _duration_ns(raw: Any) -> int:
    """Go's time.ParseDuration, plus: a bare number means seconds, numbers
    from TOML are seconds, surrounding blanks are ignored. Exact (integer
    nanoseconds, fractions truncated as Go does)."""
    if isinstance(raw, bool):
        raise _Bad(_DURATION_ALLOWED)
    if isinstance(raw, (int, float)):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise _Bad(_DURATION_ALLOWED)
        return _seconds_ns(Fraction(raw))
    if not isinstance(raw, str):
        raise _Bad(_DURATION_ALLOWED)
    s = raw.strip()
    if re.fullmatch(r"[+-]?" + _DECIMAL, s):
        return _seconds_ns(Fraction(s))
    neg = False
    if s[:1] in ("+", "-"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise _Bad(_DURATION_ALLOWED)
    total = 0
    while s:
        m = re.match(r"([0-9]*)(?:\.([0-9]*))?", s)
        whole, frac = m.group(1), m.group(2)
        if not whole and not frac:  # Go: neither digits before nor after '.'
            raise _Bad(_DURATION_ALLOWED)
        s = s[m.end():]
        u = re.match(r"[^0-9.]*", s)
        unit = u.group(0)
        s = s[u.end():]
        if not unit:
            raise _Bad(_DURATION_ALLOWED + "; missing unit")
        scale = _DURATION_UNITS_NS.get(unit)
        if scale is None:
            raise _Bad(_DURATION_ALLOWED + f'; unknown unit "{unit}"')
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // 10 ** len(frac)
        total += value
        if total > _MAX_NS + (1 if neg else 0):
            raise _Bad(_DURATION_ALLOWED + "; at most 2562047h47m16s")
    return -total if neg else total


def parse_duration(value: Union[str, int, float]) -> float:
    """Go duration syntax (``60s``, ``1m30s``, ``1.5h``, ``500ms``,
    ``2h45m``) to float seconds. A bare number is seconds. Raises
    ``InvalidValue`` (a ConfigError and a ValueError)."""
    try:
        return float(Fraction(_duration_ns(value), 10**9))
    except _Bad as bad:
        raise InvalidValue(f'invalid duration "{_show(value)}": {bad.allowed}') from None


# Byte units, matched case-insensitively. xiB and xi are binary (1024^n),
# xB decimal (1000^n) as in SI; a bare K/M/G/T/P is binary, as in docker's
# "-m 512m", go-units RAMInBytes and ulimit, the usual meaning for memory.
_BYTE_UNITS: Dict[str, int] = {"": 1, "b": 1}
for _n, _p in enumerate("kmgtp", start=1):
    _BYTE_UNITS[_p] = _BYTE_UNITS[_p + "i"] = _BYTE_UNITS[_p + "ib"] = 1024**_n
    _BYTE_UNITS[_p + "b"] = 1000**_n
_BYTES_ALLOWED = ("a size such as 4GiB, 512MB, 100MiB or 1024 (bytes); "
                  "KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024, KB/MB/GB/TB of 1000")
_RATE_ALLOWED = ("a rate in bytes per second such as 100MiB/s or 10MB/s ('/s' optional); "
                 "KiB/MiB/GiB and K/M/G are powers of 1024, KB/MB/GB of 1000")


def _bytes(raw: Any, allowed: str = _BYTES_ALLOWED) -> int:
    if isinstance(raw, bool):
        raise _Bad(allowed)
    if isinstance(raw, int):
        number, unit = Fraction(raw), ""
    elif isinstance(raw, float) and raw == raw and raw not in (float("inf"), float("-inf")):
        number, unit = Fraction(raw), ""
    elif isinstance(raw, str):
        m = re.fullmatch(r"\s*(" + _DECIMAL + r")\s*([A-Za-z]*)\s*", raw)
        if not m:
            raise _Bad(allowed)
        number, unit = Fraction(m.group(1)), m.group(2).lower()
    else:
        raise _Bad(allowed)
    if number < 0:
        raise _Bad(allowed)
    mult = _BYTE_UNITS.get(unit)
    if mult is None:
        raise _Bad(allowed + f'; unknown unit "{unit}"')
    return int(number * mult)


def _rate(raw: Any) -> int:
    if isinstance(raw, str):
        raw = re.sub(r"(?i)\s*/\s*s(?:ec)?\s*$", "", raw)
    return _bytes(raw, _RATE_ALLOWED)


def parse_bytes(value: Union[str, int, float]) -> int:
    """``4GiB``, ``512MB``, ``100MiB``, ``1024`` to a number of bytes.
    KiB/MiB/GiB/TiB/PiB (and Ki.., K/M/G/T/P) are binary, KB/MB/GB/TB/PB
    decimal; units are case-insensitive; fractions are rounded down."""
    try:
        return _bytes(value)
    except _Bad as bad:
        raise InvalidValue(f'invalid size "{_show(value)}": {bad.allowed}') from None


def parse_rate(value: Union[str, int, float]) -> int:
    """``100MiB/s``, ``10MB/s``, ``10MB`` to bytes per second."""
    try:
        return _rate(value)
    except _Bad as bad:
        raise InvalidValue(f'invalid rate "{_show(value)}": {bad.allowed}') from None


_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}
_BOOL_ALLOWED = "true or false (also 1/0, yes/no, on/off)"


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        s = raw.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _Bad(_BOOL_ALLOWED)


def _integer(raw: Any, allowed: str) -> int:
    if isinstance(raw, bool):
        raise _Bad(allowed)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", raw):
        return int(raw)
    raise _Bad(allowed)


def _number(raw: Any, allowed: str) -> float:
    if isinstance(raw, bool):
        raise _Bad(allowed)
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str) and re.fullmatch(
            r"\s*[+-]?" + _DECIMAL + r"(?:[eE][+-]?[0-9]+)?\s*", raw):
        value = float(raw)
    else:
        raise _Bad(allowed)
    if value != value or value in (float("inf"), float("-inf")):
        raise _Bad(allowed)
    return value


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Bad("a string")
    return raw.strip()


def _split_list(raw: Any) -> List[str]:
    """A TOML array of strings or a comma-separated string -> items, blanks
    dropped, order kept, duplicates removed."""
    allowed = "a comma-separated list or an array of strings"
    if isinstance(raw, str):
        parts = raw.split(",")
    elif isinstance(raw, (list, tuple)):
        parts = []
        for item in raw:
            if not isinstance(item, str):
                raise _Bad(allowed)
            parts.extend(item.split(","))
    else:
        raise _Bad(allowed)
    out: List[str] = []
    for p in parts:
        p = p.strip()
        if p and p not in out:
            out.append(p)
    return out


# Parser factories used by the table.

def p_list(choices: Optional[Sequence[str]] = None, what: str = "item",
           lower: bool = False) -> Callable[[Any], Tuple[str, ...]]:
    def parse(raw: Any) -> Tuple[str, ...]:
        items = _split_list(raw)
        if choices is not None or lower:
            items = [i.lower() for i in items]
        if choices is not None:
            for item in items:
                if item not in choices:
                    raise _Bad(f'unknown {what} "{item}"; allowed: {", ".join(choices)}')
        return tuple(dict.fromkeys(items))
    return parse


def p_text(raw: Any) -> Optional[str]:
    """A name or path; None when blank."""
    return _text(raw) or None


def p_block(raw: Any) -> str:
    """Free text kept as written (the netlog filter may span lines)."""
    if not isinstance(raw, str):
        raise _Bad("a string")
    return raw.strip()


def p_regex(raw: Any) -> Optional[str]:
    """A regular expression (Python syntax); None when blank."""
    text = _text(raw)
    if not text:
        return None
    try:
        re.compile(text)
    except re.error as exc:
        raise _Bad(f"a regular expression ({exc})") from None
    return text


def p_duration_min(minimum_s: float) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        ns = _duration_ns(raw)
        if ns < minimum_s * 10**9:
            raise _Bad(_DURATION_ALLOWED + f", at least {minimum_s:g}s")
        return float(Fraction(ns, 10**9))
    return parse


def p_url(default_scheme: str) -> Callable[[Any], str]:
    allowed = (f"HOST:PORT or a URL such as {default_scheme}://HOST:PORT "
               "(schemes http, https)")

    def parse(raw: Any) -> str:
        s = _text(raw)
        if not s or any(c.isspace() for c in s):
            raise _Bad(allowed)
        if "://" not in s:
            s = f"{default_scheme}://{s}"
        try:
            parts = urlsplit(s)
            port = parts.port
        except ValueError as exc:
            raise _Bad(f"{allowed}; {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise _Bad(allowed)
        if port is not None and not 1 <= port <= 65535:
            raise _Bad(allowed + "; port 1..65535")
        if parts.query or parts.fragment:
            raise _Bad(allowed + "; no query or fragment")
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return parse


def p_port(zero_means_none: bool = False) -> Callable[[Any], Optional[int]]:
    allowed = "a port number 1..65535"
    if zero_means_none:
        allowed += " (0: take the start of the kernel's ip_local_port_range)"

    def parse(raw: Any) -> Optional[int]:
        v = _integer(raw, allowed)
        if v == 0 and zero_means_none:
            return None
        if not 1 <= v <= 65535:
            raise _Bad(allowed)
        return v
    return parse


def p_cpu(raw: Any) -> Optional[float]:
    allowed = "a number of CPU cores greater than 0, such as 2.0 or 0.5 (0: no limit)"
    v = _number(raw, allowed)
    if v == 0:
        return None
    if v < 0:
        raise _Bad(allowed)
    return v


def p_size(zero_means_none: bool) -> Callable[[Any], Optional[int]]:
    def parse(raw: Any) -> Optional[int]:
        v = _bytes(raw)
        if v == 0:
            if zero_means_none:
                return None
            raise _Bad(_BYTES_ALLOWED + "; greater than 0")
        return v
    return parse


def p_net_rate(raw: Any) -> Optional[int]:
    return _rate(raw) or None


def p_sampling_rate(raw: Any) -> float:
    allowed = "a fraction of points to keep, 0.01..1.0"
    v = _number(raw, allowed)
    if not 0.01 <= v <= 1.0:
        raise _Bad(allowed)
    return v


def p_positive_int(raw: Any) -> int:
    allowed = "a whole number of points per minute greater than 0, such as 1500"
    v = _integer(raw, allowed)
    if v <= 0:
        raise _Bad(allowed)
    return v


def p_log_level(raw: Any) -> str:
    s = _text(raw).lower()
    if s not in LOG_LEVELS:
        raise _Bad("one of debug, info, warn, warning, error")
    return LOG_LEVELS[s]


def p_host_root(raw: Any) -> str:
    s = _text(raw)
    return s.rstrip("/") if s else ""


class Tags(dict):
    """Parsed tags, plus the items that were dropped and why (one warning
    each: a bad tag must not stop the collector DataKit starts)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.dropped: List[str] = []


def p_tags(raw: Any) -> Tags:
    """``k=v,k2=v2`` or ``k=v;k2=v2``, a TOML table or an array of ``k=v``
    strings. DataKit joins its tags with ';' and a value may hold ',': text
    with a ';' is split on ';' only. Items without '=' or with an empty key
    or value are dropped (``Tags.dropped``), never fatal."""
    out = Tags()

    def add(item: str, key: str, val: str) -> None:
        if key and val:
            out[key] = val
        else:
            out.dropped.append(f'"{item}": needs a non-empty key and value')

    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(v, (dict, list)):
                out.dropped.append(f'"{k}": needs a string value')
            else:
                add(f"{k}={_show_plain(v)}", str(k).strip(), _show_plain(v).strip())
        return out
    if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
        items = list(raw)
    elif isinstance(raw, str):
        items = raw.split(";") if ";" in raw else raw.split(",")
    else:
        raise _Bad('key=value pairs separated by "," or ";"')
    for part in items:
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            out.dropped.append(f'"{part}": has no "="')
            continue
        key, val = (x.strip() for x in part.split("=", 1))
        add(part, key, val)
    return out


# --------------------------------------------------------------------------
# The result.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """The parsed ``run`` configuration. Field defaults here are THE
    defaults (the option table reads them). See ``OPTIONS`` for sources."""

    enabled_plugins: Tuple[str, ...] = ("ebpf-net",)
    l7net_enabled: Tuple[str, ...] = ("httpflow",)
    interval: float = 60.0
    datakit_apiserver: Optional[str] = DEFAULT_APISERVER  # None when only --output is given
    trace_server: Optional[str] = None
    output: Optional[str] = None                # "-" stdout, else a file to append to
    hostname: str = field(default_factory=socket.gethostname)
    service: str = "ebpf"
    tags: Dict[str, str] = field(default_factory=dict)  # never holds host/service
    pidfile: Optional[str] = None               # started as <dir>/datakit-ebpf: <dir>/datakit-ebpf.pid
    log: Optional[str] = None                   # None: stderr; as datakit-ebpf: <dir>/datakit-ebpf.log
    log_level: str = "info"
    ipv6_disabled: bool = False
    ephemeral_port: Optional[int] = None        # None: from the kernel, at load
    pprof_host: str = "127.0.0.1"
    pprof_port: Optional[int] = None            # None: no debug server
    netlog_metric: bool = True
    netlog_log: bool = False
    netlog_protocols: Tuple[str, ...] = ("http",)
    netlog_blacklist: str = ""
    netlog_interfaces: Optional[str] = None     # regex on interface names; None: the defaults
    trace_env_list: Tuple[str, ...] = ()
    trace_name_list: Tuple[str, ...] = ()
    trace_env_blacklist: Tuple[str, ...] = ()
    trace_name_blacklist: Tuple[str, ...] = ALWAYS_UNTRACED
    trace_protos: Tuple[str, ...] = ()
    trace_protos_blacklist: Tuple[str, ...] = ()
    conv_to_ddtrace: bool = False
    trace_allprocess: bool = False
    cpu_limit: Optional[float] = None           # cores
    mem_limit: Optional[int] = None             # bytes
    net_limit: Optional[int] = None             # bytes per second, any NIC, rx or tx
    sampling_rate: Optional[float] = None
    sampling_rate_pts_per_min: Optional[int] = None
    workload_labels: Tuple[str, ...] = ()
    workload_label_prefix: str = ""
    kubernetes_url: str = "https://kubernetes.default:443"
    bearer_token: str = DEFAULT_SA_TOKEN        # "" when only bearer_token_string is set
    bearer_token_string: str = ""
    kubernetes_ca: str = DEFAULT_SA_CA          # the API server's certificate is checked against it
    kubernetes_insecure_skip_verify: bool = False
    node_name: str = ""                         # "": the host name
    container_endpoints: Tuple[str, ...] = ()
    host_root: str = ""
    host_proc: str = "/proc"
    spool_dir: Optional[str] = None
    spool_max_bytes: int = 256 * 1024 * 1024
    config_file: Optional[str] = None
    # flags other DataKit versions pass that this build has no use for, as given
    foreign_options: Tuple[str, ...] = field(default=(), compare=False)
    # what start-up should log as warnings (dropped tags, unknown plugin names)
    warnings: Tuple[str, ...] = field(default=(), compare=False, repr=False)
    # option name -> where its value came from ("default", "--interval",
    # "ENV_INPUT_EBPF_INTERVAL", "interval (/etc/ebpf.conf)"); for logs.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict of the options (no ``sources``)."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("sources", "warnings"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out


_CONFIG_FIELDS = {f.name: f for f in fields(Config)}


def _field_default(name: str) -> Any:
    f = _CONFIG_FIELDS[name]
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


# --------------------------------------------------------------------------
# The option table.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    name: str                              # Config field and canonical file key
    parse: Callable[[Any], Any]
    flags: Tuple[str, ...] = ()            # first is the canonical one
    envs: Tuple[str, ...] = ()             # first set (non-empty) wins
    keys: Tuple[str, ...] = ()             # extra file keys besides name and flags
    kind: str = "value"                    # value | bool | list | tags
    help: str = ""
    metavar: Optional[str] = None
    internal_default: Any = None           # only for options that are not Config fields
    # the plugin (or "kubernetes") the option is for: given while that does
    # not run, the option has no effect (options_without_effect)
    feature: Optional[str] = None

    @property
    def is_field(self) -> bool:
        return self.name in _CONFIG_FIELDS

    @property
    def default(self) -> Any:
        return _field_default(self.name) if self.is_field else self.internal_default

    def file_keys(self) -> Tuple[str, ...]:
        out = [self.name, self.name.replace("_", "-")]
        for f in self.flags:
            k = f.lstrip("-")
            out += [k, k.replace("-", "_"), k.replace("_", "-")]
        out += list(self.keys)
        return tuple(dict.fromkeys(out))


def _opt(name, parse, flags=(), envs=(), keys=(), kind="value", help="", metavar=None,
         internal_default=None, feature=None) -> Option:
    return Option(name, parse, tuple(flags), tuple(envs), tuple(keys), kind, help,
                  metavar, internal_default, feature)


E = "ENV_INPUT_EBPF_"
OPTIONS: Tuple[Option, ...] = (
    _opt("enabled_plugins", p_list(lower=True), ["--enabled"],
         [E + "ENABLED_PLUGINS"], kind="list", metavar="LIST",
         help="plugins to run: " + ", ".join(PLUGINS)),
    _opt("l7net_enabled", p_list(lower=True), ["--l7net-enabled"],
         [E + "L7NET_ENABLED"], kind="list", metavar="LIST",
         help="ebpf-net L7 protocols: httpflow, httpflow-tls"),
    _opt("l7net_disabled", p_list(lower=True), ["--l7net-disabled"],
         kind="list", metavar="LIST", internal_default=(),
         help="removed from the l7net_enabled list"),
    _opt("interval", p_duration_min(1.0), ["--interval"], [E + "INTERVAL"], metavar="DUR",
         help="aggregation and flush interval, Go duration (1m30s), at least 1s"),
    _opt("datakit_apiserver", p_url("http"), ["--datakit-apiserver"], metavar="HOST:PORT",
         help="DataKit to post points to (default 0.0.0.0:9529, as the original; "
              "not used when only --output is given)"),
    _opt("trace_server", p_url("http"), ["--trace-server"], [E + "TRACE_SERVER"],
         metavar="HOST:PORT", help="where ebpf-trace spans go (POST /v1/bpftracing)",
         feature="ebpf-trace"),
    _opt("output", p_text, ["--output"], ["DKE_OUTPUT"], metavar="PATH",
         help="write points as line protocol to PATH (append) or - for stdout"),
    _opt("hostname", p_text, ["--hostname"], metavar="NAME",
         help="value of the host tag (else a host tag in --tags, else the machine's name)"),
    _opt("service", p_text, ["--service"], metavar="NAME", help="value of the service tag"),
    _opt("tags", p_tags, ["--tags"], kind="tags", metavar="K=V[,K=V]",
         help='global tags, pairs separated by "," or ";"'),
    _opt("pidfile", p_text, ["--pidfile"], metavar="PATH",
         help="write our pid there (default: none; <dir>/datakit-ebpf.pid when started "
              "as <dir>/datakit-ebpf)"),
    _opt("log", p_text, ["--log"], metavar="PATH",
         help="log file, size-bounded and rotated (default: stderr; <dir>/datakit-ebpf.log "
              "when started as <dir>/datakit-ebpf)"),
    _opt("log_level", p_log_level, ["--log-level"], metavar="LEVEL",
         help="debug, info, warn, error"),
    _opt("ipv6_disabled", _bool, ["--ipv6-disabled"], [E + "IPV6_DISABLED"], kind="bool",
         help="the system has no IPv6"),
    _opt("ephemeral_port", p_port(zero_means_none=True), ["--ephemeral-port", "--ephemeral_port"],
         [E + "EPHEMERAL_PORT"], metavar="N",
         help="client ports are >= N (default: the kernel's ip_local_port_range)"),
    _opt("pprof_host", p_text, ["--pprof-host"], [E + "PPROF_HOST"], metavar="HOST",
         help="address of the debug HTTP server"),
    _opt("pprof_port", p_port(), ["--pprof-port"], [E + "PPROF_PORT"], metavar="PORT",
         help="port of the debug HTTP server (off unless set)"),
    _opt("netlog_metric", _bool, ["--netlog-metric"],
         [E + "NETLOG_METRIC", "ENV_NETLOG_METRIC"], kind="bool",
         help="bpf-netlog: netflow/httpflow metrics from packets", feature="bpf-netlog"),
    _opt("netlog_log", _bool, ["--netlog-log"], [E + "NETLOG_LOG", "ENV_NETLOG_LOG"],
         kind="bool", help="bpf-netlog: bpf_net_l4_log/bpf_net_l7_log", feature="bpf-netlog"),
    # DataKit's older key: netlog_metric_only = false means "logs too".
    _opt("netlog_metric_only", _bool, [], [E + "NETLOG_METRIC_ONLY", "ENV_NETLOG_METRIC_ONLY"],
         kind="bool", internal_default=None, feature="bpf-netlog"),
    _opt("netlog_protocols", p_list(lower=True), ["--netlog-protocols"], kind="list",
         metavar="LIST", help="bpf-netlog L7 protocols", feature="bpf-netlog"),
    _opt("netlog_blacklist", p_block, [],
         ["DKE_NETLOG_NET_FILTER", E + "NETLOG_BLACKLIST", "ENV_NETLOG_BLACKLIST"], feature="bpf-netlog"),
    _opt("netlog_interfaces", p_regex, ["--netlog-interfaces"], [E + "NETLOG_INTERFACES"], metavar="REGEX",
         help="bpf-netlog: capture on interfaces whose name matches (default: physical NICs of the "
              "host, every UP interface but lo in other namespaces)", feature="bpf-netlog"),
    _opt("trace_env_list", p_list(), ["--trace-env-list"], [E + "TRACE_ENV_LIST"],
         kind="list", metavar="LIST", help="trace processes having any of these env vars",
         feature="ebpf-trace"),
    _opt("trace_name_list", p_list(), ["--trace-name-list"], [E + "TRACE_NAME_LIST"],
         kind="list", metavar="LIST", help="trace processes with these names", feature="ebpf-trace"),
    _opt("trace_env_blacklist", p_list(), ["--trace-env-blacklist"],
         [E + "TRACE_ENV_BLACKLIST"], kind="list", metavar="LIST",
         help="never trace processes having any of these env vars", feature="ebpf-trace"),
    _opt("trace_name_blacklist", p_list(), ["--trace-name-blacklist"],
         [E + "TRACE_NAME_BLACKLIST"], kind="list", metavar="LIST",
         help="never trace processes with these names (datakit, datakit-ebpf always)",
         feature="ebpf-trace"),
    _opt("trace_protos", p_list(lower=True), ["--trace-protos"], kind="list", metavar="LIST",
         help="protocols ebpf-trace follows", feature="ebpf-trace"),
    _opt("trace_protos_blacklist", p_list(lower=True), ["--trace-protos-blacklist"],
         kind="list", metavar="LIST", help="protocols ebpf-trace ignores", feature="ebpf-trace"),
    _opt("conv_to_ddtrace", _bool, ["--conv-to-ddtrace"], [E + "CONV_TO_DDTRACE"],
         kind="bool", help="app trace ids as decimal 64-bit (ddtrace)", feature="ebpf-trace"),
    _opt("trace_allprocess", _bool, ["--trace-allprocess"], [E + "TRACE_ALL_PROCESS"],
         keys=["trace_all_process"], kind="bool", help="trace every process", feature="ebpf-trace"),
    _opt("cpu_limit", p_cpu, ["--res-cpu"], [E + "CPU_LIMIT"], metavar="CORES",
         help="exit when using more CPU cores than this"),
    _opt("mem_limit", p_size(zero_means_none=True), ["--res-mem"], [E + "MEM_LIMIT"],
         metavar="SIZE", help="exit when RSS exceeds this (4GiB, 512MB)"),
    _opt("net_limit", p_net_rate, ["--res-bandwidth", "--res-net"], [E + "NET_LIMIT"],
         metavar="RATE", help="exit when any NIC moves more than this (100MiB/s)"),
    _opt("sampling_rate", p_sampling_rate, ["--sampling-rate"], [E + "SAMPLING_RATE"],
         metavar="RATE", help="keep this fraction of points, 0.01..1.0"),
    _opt("sampling_rate_pts_per_min", p_positive_int, ["--sampling-rate-ptsperminute"],
         [E + "SAMPLING_RATE_PTSPERMIN"], metavar="N",
         help="adapt the sampling rate to about N points per minute"),
    _opt("workload_labels", p_list(), [], ["DKE_K8S_WORKLOAD_LABELS", E + "WORKLOAD_LABELS"],
         kind="list", feature="kubernetes"),
    # DataKit 1.84 passes K8S_WORKLOAD_LABEL_PREFIX (no DKE_): accept both.
    _opt("workload_label_prefix", _text, [],
         ["DKE_K8S_WORKLOAD_LABEL_PREFIX", "K8S_WORKLOAD_LABEL_PREFIX",
          E + "WORKLOAD_LABEL_PREFIX"], feature="kubernetes"),
    # K8S_* are the names older datakit-ebpf releases read.
    _opt("kubernetes_url", p_url("https"), ["--k8s-url"], ["DKE_K8S_URL", "K8S_URL", E + "KUBERNETES_URL"],
         metavar="URL",
         help="Kubernetes API server (default https://kubernetes.default:443)",
         feature="kubernetes"),
    _opt("bearer_token", _text, ["--k8s-bearer-token-path"],
         ["DKE_K8S_BEARER_TOKEN_PATH", "K8S_BEARER_TOKEN_PATH", E + "BEARER_TOKEN"], metavar="PATH",
         help="file holding the API token, re-read when it changes (default: the service account's)",
         feature="kubernetes"),
    _opt("bearer_token_string", _text, ["--k8s-bearer-token"],
         ["DKE_K8S_BEARER_TOKEN", "K8S_BEARER_TOKEN_STRING", E + "BEARER_TOKEN_STRING"], metavar="TOKEN",
         help="the API token itself, instead of a file",
         feature="kubernetes"),
    _opt("kubernetes_ca", _text, ["--k8s-ca"], ["DKE_K8S_CA", E + "KUBERNETES_CA"], metavar="PATH",
         help="CA certificate the API server's is verified against (default: the service account's)",
         feature="kubernetes"),
    _opt("kubernetes_insecure_skip_verify", _bool, ["--k8s-insecure-skip-verify"],
         ["DKE_K8S_INSECURE_SKIP_VERIFY", E + "KUBERNETES_INSECURE_SKIP_VERIFY"], kind="bool",
         help="do not verify the API server's certificate (as the original did)",
         feature="kubernetes"),
    _opt("node_name", _text, ["--k8s-node-name"], ["NODE_NAME", "DKE_K8S_NODE_NAME", E + "NODE_NAME"],
         metavar="NAME",
         help="this node's name in Kubernetes (default: the host name)",
         feature="kubernetes"),
    _opt("container_endpoints", p_list(), ["--container-endpoints"], kind="list",
         metavar="LIST", help="container runtime sockets", feature="bpf-netlog"),
    _opt("host_root", p_host_root, [], ["HOST_ROOT"]),
    _opt("host_proc", _text, [], ["HOST_PROC"]),
    _opt("spool_dir", p_text, ["--spool-dir"], metavar="DIR",
         help="keep undelivered points here"),
    _opt("spool_max_bytes", p_size(zero_means_none=False), ["--spool-max-bytes"],
         metavar="SIZE", help="size cap of --spool-dir"),
)
del E

OPTION: Dict[str, Option] = {o.name: o for o in OPTIONS}

# File keys DataKit's external-input wrapper owns; accepted in ebpf.conf, ignored.
DATAKIT_KEYS = ("daemon", "name", "cmd", "envs", "election")


def _build_key_map() -> Dict[str, Option]:
    out: Dict[str, Option] = {}
    for o in OPTIONS:
        for k in o.file_keys():
            if k in out and out[k] is not o:  # pragma: no cover - table bug
                raise AssertionError(f"file key {k} maps to {out[k].name} and {o.name}")
            out[k] = o
    for k in DATAKIT_KEYS + ("args", "config"):
        assert k not in out, k
    return out


FILE_KEYS: Dict[str, Option] = _build_key_map()
ALL_FLAGS: Tuple[str, ...] = ("--config",) + tuple(f for o in OPTIONS for f in o.flags)
_DEST = "dkecfg_"


# --------------------------------------------------------------------------
# argparse
# --------------------------------------------------------------------------

class _Record(argparse.Action):
    """Keeps every occurrence with the flag spelling the user typed, so that
    messages name it and list flags can accumulate (pflag StringSlice)."""

    def __call__(self, parser, namespace, values, option_string=None):
        entries = list(getattr(namespace, self.dest, None) or [])
        entries.append((option_string, values))
        setattr(namespace, self.dest, entries)


def _argparse_message(message: str) -> str:
    message = " ".join(message.split())
    m = re.match(r"unrecognized arguments: (\S+)", message)
    if m:
        tok = m.group(1)
        hint = ""
        if tok.startswith("-"):
            close = difflib.get_close_matches(tok.split("=", 1)[0], ALL_FLAGS, n=1)
            if close:
                hint = f"; did you mean {close[0]}?"
        return f'invalid argument "{_show(tok)}": not a flag of dkebpf run{hint}'
    m = re.match(r"argument (-[^\s:/]+)\S*: expected one argument", message)
    if m:
        return f'invalid {m.group(1)} "": a value is required after {m.group(1)}'
    return f"invalid command line: {message}"


class ConfigArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one-line ConfigErrors (no usage dump,
    no SystemExit). Abbreviated flags are refused, as in pflag."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(_argparse_message(message))


def _help(o: Option) -> str:
    text = o.help
    if o.is_field:
        d = o.default
        if o.name == "hostname":
            d = None
        if d not in (None, "", ()):
            shown = ",".join(d) if isinstance(d, tuple) else d
            if o.name == "interval":
                shown = f"{d:g}s"
            elif o.name == "spool_max_bytes":
                shown = "256MiB"
            text += f" (default {shown})"
    if o.envs:
        text += f" [env {', '.join(o.envs)}]"
    return text.replace("%", "%%")


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every ``run`` flag to ``parser``. Values are recorded raw (under
    ``dkecfg_*`` names) and parsed by ``load_config``; pass the namespace to
    ``load_config`` or re-parse the argv there."""
    parser.add_argument("--config", dest=_DEST + "config", action=_Record,
                        default=argparse.SUPPRESS, metavar="FILE",
                        help="TOML file: datakit-ebpf keys at top level, or DataKit's "
                             "ebpf.conf with [[inputs.ebpf]]; below env and flags")
    for o in OPTIONS:
        if not o.flags:
            continue
        kw: Dict[str, Any] = dict(dest=_DEST + o.name, action=_Record,
                                  default=argparse.SUPPRESS, help=_help(o))
        if o.kind == "bool":
            kw.update(nargs="?", const="true", metavar="BOOL")
        else:
            kw["metavar"] = o.metavar or "VALUE"
        parser.add_argument(*o.flags, **kw)
    return parser


def build_run_parser(prog: str = "dkebpf run", add_help: bool = True) -> ConfigArgumentParser:
    """The argparse parser of ``dkebpf run`` (also usable via ``parents=``)."""
    parser = ConfigArgumentParser(
        prog=prog, add_help=add_help,
        description="Collect eBPF data and post it to DataKit. Precedence: "
                    "flags > environment > --config file.")
    return add_run_arguments(parser)


# --------------------------------------------------------------------------
# Sources -> layers. A layer maps option name -> [(label, raw value), ...].
# --------------------------------------------------------------------------

Layer = Dict[str, List[Tuple[str, Any]]]


def _namespace_layer(ns: argparse.Namespace, where: str = "") -> Layer:
    layer: Layer = {}
    for o in OPTIONS:
        entries = getattr(ns, _DEST + o.name, None)
        if entries:
            layer[o.name] = [(flag + where, raw) for flag, raw in entries]
    return layer


def _env_layer(environ: Mapping[str, str]) -> Layer:
    layer: Layer = {}
    for o in OPTIONS:
        for var in o.envs:
            raw = environ.get(var)
            if raw is not None and raw.strip():
                layer[o.name] = [(var, raw)]
                break
    return layer


def _read_toml(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f'invalid --config "{_show(path)}": cannot read it: '
                          f'{exc.strerror or exc}') from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f'invalid --config "{_show(path)}": line {line}: '
                          "not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)
        if m:
            msg = f"line {m.group(1)}, column {m.group(2)}: " + msg[:m.start()] + msg[m.end():]
        elif "end of document" in msg:
            msg = f"line {text.count(chr(10)) + 1}: {msg}"
        raise ConfigError(f'invalid --config "{_show(path)}": TOML syntax error at {msg}') from None


def _unknown_key(path: str, key: str, where: str, extra: Sequence[str] = ()) -> ConfigError:
    close = difflib.get_close_matches(key, list(FILE_KEYS) + list(extra), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return ConfigError(f'invalid --config "{_show(path)}": unknown key "{_show(key)}" '
                       f"{where}{hint}")


def _keys_layer(table: Mapping[str, Any], path: str, where: str,
                datakit: bool) -> Layer:
    layer: Layer = {}
    set_by: Dict[str, str] = {}
    for key, raw in table.items():
        if datakit and key in DATAKIT_KEYS:
            continue
        o = FILE_KEYS.get(key)
        if o is None:
            raise _unknown_key(path, key, where, DATAKIT_KEYS + ("args",) if datakit else ())
        label = (f"[inputs.ebpf.tags] ({path})" if datakit and key == "tags"
                 else f"{key} ({path})")
        if o.name in set_by:
            raise _invalid(label, raw, f'"{set_by[o.name]}" in the same file already sets '
                                       f"{o.name}; keep one")
        if isinstance(raw, dict) and o.kind != "tags":
            raise _invalid(label, raw, "a value, not a table")
        set_by[o.name] = key
        layer[o.name] = [(label, raw)]
    return layer


def _is_foreign(token: str) -> bool:
    name = token.split("=", 1)[0]
    return any(name.startswith(f) if f.endswith("-") else name == f for f in FOREIGN_FLAGS)


def _split_foreign(argv: Sequence[str], foreign: List[str], where: str = "") -> List[str]:
    """argv without the FOREIGN_FLAGS (and the value after one, when the
    next word is not a flag); their names go to ``foreign``."""
    rest: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and _is_foreign(token):
            foreign.append(token.split("=", 1)[0] + where)
            takes_next = "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("-")
            i += 2 if takes_next else 1
            continue
        rest.append(token)
        i += 1
    return rest


def _args_layer(args: Any, path: str, foreign: List[str]) -> Layer:
    where = f" (args in {path})"
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _invalid(f"args ({path})", args, "a list of command-line flags (strings)")
    if args[:1] == ["run"]:
        args = args[1:]
    args = _split_foreign(args, foreign, where)
    try:
        ns = build_run_parser().parse_args(args)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{where}") from None
    if getattr(ns, _DEST + "config", None):
        raise _invalid("--config" + where, ns.dkecfg_config[-1][1],
                       "a config file cannot name another one")
    return _namespace_layer(ns, where)


def _file_layers(path: str, foreign: List[str]) -> List[Layer]:
    """Lowest first: [args of [[inputs.ebpf]]], keys."""
    doc = _read_toml(path)
    if "inputs" not in doc:
        return [_keys_layer(doc, path, "at top level", datakit=False)]
    for key in doc:
        if key != "inputs":
            raise _unknown_key(path, key, "outside [[inputs.ebpf]]")
    inputs = doc["inputs"]
    if not isinstance(inputs, dict):
        raise ConfigError(f'invalid --config "{_show(path)}": "inputs" must hold '
                          "an [[inputs.ebpf]] table")
    for key in inputs:
        if key != "ebpf":
            raise ConfigError(f'invalid --config "{_show(path)}": unknown input '
                              f'"[[inputs.{_show(key)}]]"; only [[inputs.ebpf]] is read')
    tables = inputs.get("ebpf")
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f'invalid --config "{_show(path)}": no [[inputs.ebpf]] table')
    if len(tables) > 1:
        raise ConfigError(f'invalid --config "{_show(path)}": {len(tables)} '
                          "[[inputs.ebpf]] tables; exactly one is allowed")
    table = dict(tables[0])
    layers: List[Layer] = []
    if "args" in table:
        layers.append(_args_layer(table.pop("args"), path, foreign))
    layers.append(_keys_layer(table, path, "in [[inputs.ebpf]]", datakit=True))
    return layers


# --------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------

def _parse_entry(o: Option, label: str, raw: Any) -> Any:
    try:
        return o.parse(raw)
    except _Bad as bad:
        raise _invalid(label, raw, bad.allowed) from None


def _is_blank(o: Option, raw: Any) -> bool:
    """An empty scalar means "not set here" (DataKit writes trace_server = ""
    for "none"); an empty list is a value (l7net_enabled = [] turns L7 off)."""
    return o.kind in ("value", "bool") and isinstance(raw, str) and not raw.strip()


def _resolve(o: Option, layers: Sequence[Layer], warnings: List[str]) -> Tuple[Any, Optional[str]]:
    """Value and the label of the source that set it (None: default).
    A higher layer replaces a lower one, except tags, merged key by key.
    Within the flags layer a repeated list flag accumulates (pflag's
    StringSlice); a repeated scalar flag: the last one wins. Every given
    value is validated, even one a higher source overrides."""
    value: Any = None
    label: Optional[str] = None
    merged: Dict[str, str] = {}
    for layer in layers:
        entries = [(lab, raw) for lab, raw in layer.get(o.name, ()) if not _is_blank(o, raw)]
        if not entries:
            continue
        parsed = [(lab, _parse_entry(o, lab, raw)) for lab, raw in entries]
        label = parsed[-1][0]
        if o.kind == "tags":
            for lab, v in parsed:
                warnings.extend(f"{lab}: tag {why}; dropped" for why in v.dropped)
                merged.update(v)
            value = dict(merged)
        elif o.kind == "list":
            acc: Tuple[str, ...] = ()
            for _, v in parsed:
                acc = tuple(dict.fromkeys(acc + v))
            value = acc
        else:
            value = parsed[-1][1]
    if label is None:
        return o.default, None
    return value, label


def launcher_directory(program: Optional[str]) -> Optional[str]:
    """The directory of the program when it was started as datakit-ebpf
    (DataKit's <install>/externals), else None."""
    if program and os.path.basename(program) == LAUNCHER_NAME:
        return os.path.dirname(os.path.abspath(program))
    return None


def load_config(argv: Union[Sequence[str], argparse.Namespace],
                environ: Optional[Mapping[str, str]] = None,
                program: Optional[str] = None) -> Config:
    """Parse ``dkebpf run`` arguments (the words after ``run``, or a
    namespace from a parser built with ``add_run_arguments``), the
    environment and the ``--config`` file into a ``Config``. ``program``
    is argv[0]: started as ``<dir>/datakit-ebpf``, the log and the pidfile
    default to that directory."""
    if environ is None:
        environ = os.environ
    foreign: List[str] = []
    warnings: List[str] = []
    if isinstance(argv, argparse.Namespace):
        ns = argv
    else:
        ns = build_run_parser().parse_args(_split_foreign(list(argv), foreign))
    config_entries = getattr(ns, _DEST + "config", None) or []
    config_file = None
    if config_entries and config_entries[-1][1].strip():
        config_file = config_entries[-1][1].strip()
    layers: List[Layer] = []
    if config_file:
        layers += _file_layers(config_file, foreign)
    layers.append(_env_layer(environ))
    layers.append(_namespace_layer(ns))

    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for o in OPTIONS:
        values[o.name], src = _resolve(o, layers, warnings)
        sources[o.name] = src or "default"

    def given(name: str) -> bool:
        return sources[name] != "default"

    # Names this collector does not know (a newer DataKit's) are warned
    # about and left out: the others run.
    for name, known, what in (("enabled_plugins", PLUGINS, "plugin"),
                              ("l7net_enabled", L7NET_PROTOCOLS, "l7net protocol"),
                              ("l7net_disabled", L7NET_PROTOCOLS, "l7net protocol")):
        unknown = [p for p in values[name] if p not in known]
        if not unknown:
            continue
        values[name] = tuple(p for p in values[name] if p in known)
        if name == "enabled_plugins" and not values[name]:
            raise _invalid(sources[name], ",".join(unknown), f"no {what} this collector knows; "
                           f"{what}s: {', '.join(known)}")
        warnings.append(f'{sources[name]}: unknown {what}{"s" if len(unknown) > 1 else ""} '
                        f'{", ".join(unknown)} ignored ({what}s: {", ".join(known)})')
    # l7net: the enabled list (default httpflow) minus the disabled list.
    disabled = values.pop("l7net_disabled")
    values["l7net_enabled"] = tuple(p for p in values["l7net_enabled"] if p not in disabled)
    sources.pop("l7net_disabled")
    # DataKit: `netlog_metric_only = false` passes --netlog-log.
    if values.pop("netlog_metric_only") is False:
        values["netlog_log"] = True
        if not given("netlog_log"):
            sources["netlog_log"] = sources["netlog_metric_only"]
    sources.pop("netlog_metric_only")

    if not values["enabled_plugins"]:
        raise _invalid(sources["enabled_plugins"], "",
                       "at least one plugin is required: " + ", ".join(PLUGINS))

    if values["sampling_rate"] is not None and values["sampling_rate_pts_per_min"] is not None:
        raise _invalid(sources["sampling_rate_pts_per_min"], values["sampling_rate_pts_per_min"],
                       f'exclusive with the sampling rate set by {sources["sampling_rate"]}; '
                       "set only one of sampling_rate and sampling_rate_pts_per_min")

    # host and service are their own fields; the original also takes the
    # host from a "host" tag when --hostname is absent.
    tags = dict(values["tags"])
    host_tag, service_tag = tags.pop("host", None), tags.pop("service", None)
    values["tags"] = tags
    if not given("hostname"):
        values["hostname"] = host_tag or socket.gethostname()
    if not given("service") and service_tag:
        values["service"] = service_tag

    values["trace_name_blacklist"] = tuple(dict.fromkeys(
        ALWAYS_UNTRACED + tuple(values["trace_name_blacklist"])))

    if not given("host_proc") and values["host_root"]:
        values["host_proc"] = values["host_root"] + "/proc"
    # The original reads the service-account file only when no token string
    # is given: say so with an empty path.
    if values["bearer_token_string"] and not given("bearer_token"):
        values["bearer_token"] = ""

    # Points go to DataKit unless only --output is given.
    if given("output") and not given("datakit_apiserver"):
        values["datakit_apiserver"] = None
    home = launcher_directory(program)
    if home:
        for name, suffix in (("log", ".log"), ("pidfile", ".pid")):
            if not given(name):
                values[name] = os.path.join(home, LAUNCHER_NAME + suffix)
                sources[name] = f"beside {os.path.join(home, LAUNCHER_NAME)}"

    values["config_file"] = config_file
    sources["config_file"] = "--config" if config_file else "default"
    return Config(sources=sources, foreign_options=tuple(dict.fromkeys(foreign)),
                  warnings=tuple(warnings), **values)


def options_without_effect(cfg: Config, running: Sequence[str]) -> List[str]:
    """The options given (as the user wrote them) that change nothing: their
    plugin or feature is not in ``running``, or this build has no use for
    them at all (FOREIGN_FLAGS)."""
    out = [f"{cfg.sources[o.name]} ({o.feature} not running)" for o in OPTIONS
           if o.feature and o.feature not in running
           and cfg.sources.get(o.name, "default") != "default"]
    return out + [f"{flag} (not used by this collector)" for flag in cfg.foreign_options]
