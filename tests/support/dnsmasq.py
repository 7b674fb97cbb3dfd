"""dnsmasq and dig for DNS tests: servers inside test namespaces or on the
host side of their veth pairs, answering only the records they are given
(no query leaves the machine)."""
import subprocess
import time


class Dnsmasq:
    """dnsmasq on port 53 of `listen` addresses inside ns (None: the host
    namespace), with only the given records."""

    def __init__(self, ns, listen, records):
        self.args = [*(ns.prefix() if ns else ()), "/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv",
                     "--no-hosts", "--conf-file=/dev/null", "--bind-interfaces", "--port=53",
                     "--user=root", "--pid-file=", "--local-ttl=300", "--log-facility=-",
                     *[f"--listen-address={a}" for a in listen], *records]

    def __enter__(self):
        self.p = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        if self.p.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {self.p.stdout.read()}")
        return self

    def __exit__(self, *exc):
        self.p.terminate()
        self.p.wait(5)


def dig(server, name, qtype="A", tcp=False, prefix=()):
    """One query (no retry), answers as (rcode text, [answer lines])."""
    args = [*prefix, "dig", f"@{server}", "-p", "53", name, qtype, "+tries=1", "+time=2", "+noall",
            "+comments", "+answer"]
    if tcp:
        args.append("+tcp")
    out = subprocess.run(args, capture_output=True, text=True, timeout=20).stdout
    status = None
    for line in out.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
    answers = [ln.split() for ln in out.splitlines() if ln and not ln.startswith(";")]
    return status, answers
