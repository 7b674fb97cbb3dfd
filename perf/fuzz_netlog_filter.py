"""netlog_blacklist parser fuzz, the long run (not in CI; the unit tests run
20 000 of the same inputs): N generated inputs (default 1 000 000), token
soup and edited valid rules. Each must either parse, print and parse back
to the same tree, compile to classic BPF and encode for the per-connection
evaluator, or raise FilterError with a position inside the text and a
caret line. Anything else is reported with the input and exits 1.

    .venv/bin/python perf/fuzz_netlog_filter.py [N] [SEED]

Prints `name: value` lines like the benchmarks."""
import random
import sys
import time

from timing import TESTS_DIR

sys.path.insert(0, TESTS_DIR)   # reference/ and support/ as packages (no dkebpf there to shadow)

from dkebpf import _netlog_filter  # noqa: E402
from dkebpf.errors import FilterError  # noqa: E402
from dkebpf.netlog.filter import parse_rules, same_tree  # noqa: E402
from dkebpf.netlog.filter_cbpf import socket_filter  # noqa: E402
from support.netlog_filter_gen import fuzz_input  # noqa: E402


def one(text):
    try:
        rules = parse_rules(text)
    except FilterError as exc:
        lines = text.split("\n")
        if not (1 <= exc.line <= len(lines) and 1 <= exc.col <= len(lines[exc.line - 1]) + 1):
            raise AssertionError(f"position {exc.line}:{exc.col} outside the text") from None
        msg = str(exc).split("\n")
        if len(msg) != 3 or "^" not in msg[2]:
            raise AssertionError(f"message without the rule line and caret: {exc}") from None
        return "error"
    again = parse_rules(rules.format())
    if not all(same_tree(a.expr, b.expr) for a, b in zip(rules.statements, again.statements)):
        raise AssertionError(f"printed form parses differently: {rules.format()!r}")
    socket_filter(rules, "eth0")
    _netlog_filter.ConnFilter(rules.statements)
    return "ok"


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    rng = random.Random(seed)
    counts = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for i in range(n):
        text = fuzz_input(rng)
        try:
            counts[one(text)] += 1
        except Exception as exc:  # the finding: report it whole
            print(f"fuzz_netlog_filter: input {i} (seed {seed}) {text!r}: {type(exc).__name__}: {exc}")
            raise
    took = time.perf_counter() - start
    print(f"fuzz_netlog_filter_inputs: {n}")
    print(f"fuzz_netlog_filter_parsed: {counts['ok']}")
    print(f"fuzz_netlog_filter_rejected: {counts['error']}")
    print(f"fuzz_netlog_filter_inputs_per_s: {n / took:.0f}")


if __name__ == "__main__":
    main()
