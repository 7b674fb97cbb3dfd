"""Real servers the e2e tests run inside their network namespaces:
Python's http.server, and dnsmasq answering only the records it is given
(no query leaves the machine), with dig as the client."""
import subprocess
import sys
import time


class HttpServer:
    """python3 -m http.server inside the namespace, ready once it accepts."""

    def __init__(self, ns, host, port):
        self.p = subprocess.Popen([*ns.prefix(), sys.executable, "-m", "http.server", str(port),
                                   "--bind", host], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if ns.exec("python3", "-c", f"import socket; socket.create_connection(('{host}', {port}), 1)",
                       check=False).returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("http.server did not start")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            self.p.wait(5)


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
