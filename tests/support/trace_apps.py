"""Real programs for the ebpf-trace tests: redis-server, and a threaded
Python HTTP server that calls it on every request (one span per request
with Redis child spans on the same thread). Loopback only."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

from .netns import call_in_netns

# GET /item/<key>: SET <key> <n>, GET <key> on redis (a connection per
# handler thread, kept), then 200 with the value; GET /missing: 404.
# argv: port redis_port; prints "ready".
WEB_REDIS_SERVER = r"""
import http.server, socket, sys, threading
port, rport = int(sys.argv[1]), int(sys.argv[2])
local = threading.local()

def resp(*words):
    out = b"*%d\r\n" % len(words)
    for w in words:
        out += b"$%d\r\n%s\r\n" % (len(w), w)
    return out

def call(*words):
    s = getattr(local, "s", None)
    if s is None:
        s = local.s = socket.create_connection(("127.0.0.1", rport))
        local.f = s.makefile("rb")
    s.sendall(resp(*words))
    line = local.f.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        return local.f.read(n + 2)[:-2] if n >= 0 else None
    return line.rstrip(b"\r\n")

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if not self.path.startswith("/item/"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        key = self.path[len("/item/"):].encode()
        call(b"SET", key, b"v-" + key)
        body = call(b"GET", key) or b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

s = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
print("ready", flush=True)
s.serve_forever()
"""


def spans_until(plugin, pred, timeout=15):
    """Span rows (dicts) a started TracePlugin collects until pred(rows)
    holds or timeout s pass."""
    rows = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pb in plugin.collect(time.time_ns()):
            rows += pb.batch.to_pylist()
        if pred(rows):
            break
        time.sleep(0.3)
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15, host="127.0.0.1"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def start_after(delay, args, env, **popen_kw):
    """Start `args` through a shell that waits `delay` s and then exec()s
    it (same pid): a collector choosing processes by name or environment
    learns of it from /proc meanwhile, so the program is traced from its
    first call. Returns the Popen."""
    return subprocess.Popen(["/bin/sh", "-c", f'sleep {delay}; exec "$@"', "sh", *args], env=env, **popen_kw)


def stop_process(proc, timeout):
    """SIGTERM, then SIGKILL after `timeout` s; nothing if it has ended."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


class TracedApps:
    """redis-server and the web server, each with its own service name in
    its environment plus `mark` (the test's process-list variable)."""

    def __init__(self, mark, web_service="web-test", redis_service="redis-test"):
        self.redis_port, self.web_port = free_port(), free_port()
        env = dict(os.environ, **{mark: "1"})
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            env=dict(env, DKE_SERVICE=redis_service), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.web = None
        try:
            wait_port(self.redis_port, self.redis, "redis-server")
            self.web = subprocess.Popen([sys.executable, "-c", WEB_REDIS_SERVER, str(self.web_port),
                                         str(self.redis_port)], env=dict(env, DKE_SERVICE=web_service),
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            wait_port(self.web_port, self.web, "web server")
        except BaseException:
            self.stop()
            raise
        self.env = env

    def curl(self, *paths, headers=(), delay=2.5, port=None):
        """One curl process asking for every path on one keep-alive
        connection, started (not waited for). Its environment carries the
        mark, and it first waits `delay` seconds as a shell, which exec()s
        curl (same pid): a collector choosing processes by environment
        learns of it from /proc meanwhile, so curl's side is traced too.
        Returns the Popen."""
        args = ["curl", "-s", "-o", "/dev/null"]
        for h in headers:
            args += ["-H", h]
        for p in paths:
            args.append(f"http://127.0.0.1:{port or self.web_port}{p}")
        return start_after(delay, args, self.env)

    def stop(self):
        for p in (self.web, self.redis):
            stop_process(p, 5)


# A link of a service chain, configured by argv[1] (JSON: ip, port, name,
# next, pooled, hold, sleep, tls): GET /chain/<x> -> when `next` is set, GET
# <next>/chain/<x> from the handler's thread, on a new connection, or
# (`pooled`) on one kept-alive connection all handler threads share, taking
# turns; else (the last link) the request waits `sleep` s, and requests for
# /chain/con-* wait until `hold` of them are in (a barrier: concurrent
# requests overlap at every link however the load delays their clients).
# Then 200 with "<name>(<what next answered>)". Thread per connection.
# `tls` (a directory with cert.pem and key.pem): HTTPS served and called
# (Python's ssl: OpenSSL's libssl), the next link's certificate not checked.
CHAIN_SERVER = r"""
import http.client, http.server, json, ssl, sys, threading, time, urllib.parse
cfg = json.loads(sys.argv[1])
name = cfg["name"].encode()
nxt = urllib.parse.urlsplit(cfg["next"]) if cfg.get("next") else None
turn, shared = threading.Lock(), []
together = threading.Barrier(cfg["hold"]) if cfg.get("hold") else None

def connect():
    if cfg.get("tls"):
        return http.client.HTTPSConnection(nxt.hostname, nxt.port, timeout=30,
                                           context=ssl._create_unverified_context())
    return http.client.HTTPConnection(nxt.hostname, nxt.port, timeout=30)

def call_next(path):
    if not cfg.get("pooled"):
        c = connect()
        c.request("GET", path)
        body = c.getresponse().read()
        c.close()
        return body
    with turn:
        if not shared:
            shared.append(connect())
        shared[0].request("GET", path)
        return shared[0].getresponse().read()

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = name
        if nxt is not None:
            body += b"(" + call_next(self.path) + b")"
        else:
            time.sleep(cfg.get("sleep", 0))
            if together is not None and self.path.startswith("/chain/con-"):
                try:
                    together.wait(20)
                except threading.BrokenBarrierError:
                    pass  # (the test sees no overlap and says so)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer((cfg["ip"], cfg["port"]), H)
if cfg.get("tls"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg["tls"] + "/cert.pem", cfg["tls"] + "/key.pem")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""


class ServiceChain:
    """A -> B -> C: three threaded Python HTTP servers (CHAIN_SERVER), each
    in its own network namespace (`hosts`: three entered NetNS, the chain's
    hosts; A listens on every address of its namespace, curl calls it at
    hosts[0].peer_ip; A calls B at next_ips[0], B calls C at next_ips[1]),
    each with its own
    DKE_SERVICE (`services`) and the variables of `envs[i]` (the test's
    process-list marks). C answers after `sleep` s, and holds requests for
    /chain/con-* until `hold` of them are in. `pooled`: A and B call the
    next link over one kept-alive connection their threads share. `tls`: a
    directory for a self-signed certificate: every link (and curl) speaks
    HTTPS."""

    PORT = 8080

    def __init__(self, hosts, next_ips, envs, services=("chain-a", "chain-b", "chain-c"), sleep=0.0, hold=0,
                 pooled=False, tls=None):

        self.hosts, self.services = hosts, services
        self.scheme = "https" if tls else "http"
        self.procs = []
        if tls and not os.path.exists(os.path.join(tls, "cert.pem")):
            from .tls_nginx import make_cert
            os.makedirs(tls, exist_ok=True)
            make_cert(str(tls))
        try:
            for i in reversed(range(3)):  # C first: each link calls one that listens
                cfg = {"ip": "0.0.0.0", "port": self.PORT, "name": services[i], "pooled": pooled,
                       "next": f"{self.scheme}://{next_ips[i]}:{self.PORT}" if i < 2 else None,
                       "sleep": sleep, "hold": hold, "tls": str(tls) if tls else None}
                env = dict(os.environ, **envs[i], DKE_SERVICE=services[i])
                p = subprocess.Popen([*hosts[i].prefix(), sys.executable, "-c", CHAIN_SERVER, json.dumps(cfg)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.procs.insert(0, p)
                call_in_netns(hosts[i].name, wait_port, self.PORT, p, services[i], 15)  # (on its loopback)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self):
        """pid of A, B and C (`ip netns exec` exec()s the server: same pid)."""
        return [str(p.pid) for p in self.procs]

    def url(self, path):
        return f"{self.scheme}://{self.hosts[0].peer_ip}:{self.PORT}{path}"

    def curl(self, path, env, headers=(), delay=2.5):
        """curl (from the host's namespace) asking A for `path`, started
        through a waiting shell (see TracedApps.curl); stdout is piped."""
        args = ["curl", "-s", "-k", "--max-time", "30"]
        for h in headers:
            args += ["-H", h]
        return start_after(delay, [*args, self.url(path)], dict(os.environ, **env), stdout=subprocess.PIPE)

    def stop(self):
        for p in self.procs:
            stop_process(p, 5)


@contextlib.contextmanager
def running_linker(cmd, data_dir, datakit_url, cwd):
    """`cmd linker` (cmd: how the test runs dkebpf) on a free loopback port
    with 1 s windows and 2 s lateness, writing to `datakit_url`; yields its
    URL, SIGTERMs it after."""
    port = free_port()
    p = subprocess.Popen([*cmd, "linker", "--listen", f"127.0.0.1:{port}", "--datakit", datakit_url,
                          "--data-dir", str(data_dir), "--window", "1s", "--lateness", "2s"],
                         cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, p, "dkebpf linker")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(p, 15)


class Postgres:
    """A throw-away PostgreSQL cluster (Debian's server, trust auth) on a
    free loopback port, run as the postgres user."""

    def __init__(self):
        import glob
        import pwd
        import shutil
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not bins:
            raise RuntimeError("PostgreSQL server not installed (apt-get install postgresql)")
        bindir = os.path.dirname(bins[-1])
        pw = pwd.getpwnam("postgres")
        self.dir = tempfile.mkdtemp(prefix="dkebpf-pg-")
        self._rm = shutil.rmtree
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres"],
                       user=pw.pw_uid, group=pw.pw_gid, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=self.dir)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [os.path.join(bindir, "postgres"), "-D", data, "-p", str(self.port), "-k", self.dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "ssl=off"],
            user=pw.pw_uid, group=pw.pw_gid, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc, "postgres", timeout=30)
        except BaseException:
            self.stop()
            raise

    def psql(self, *sql, env=None, delay=2.5):
        """psql over TCP running each statement (-c), started through a
        shell that waits `delay` s first (see TracedApps.curl)."""
        args = ["psql", "-X", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        for q in sql:
            args += ["-c", q]
        return start_after(delay, args, dict(env or os.environ),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        stop_process(self.proc, 15)
        self._rm(self.dir, ignore_errors=True)


# The same service in Go (net/http; Redis over a plain TCP connection per
# request): argv port redis_port; prints "ready".
GO_WEB_REDIS_SERVER = r"""
package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

func call(c net.Conn, r *bufio.Reader, words ...string) string {
	msg := fmt.Sprintf("*%d\r\n", len(words))
	for _, w := range words {
		msg += fmt.Sprintf("$%d\r\n%s\r\n", len(w), w)
	}
	c.Write([]byte(msg))
	line, _ := r.ReadString('\n')
	if strings.HasPrefix(line, "$") {
		var n int
		fmt.Sscanf(line, "$%d", &n)
		if n < 0 {
			return ""
		}
		buf := make([]byte, n+2)
		_, _ = r.Read(buf)
		return string(buf[:n])
	}
	return strings.TrimSpace(line)
}

func main() {
	rport := os.Args[2]
	http.HandleFunc("/item/", func(w http.ResponseWriter, req *http.Request) {
		c, err := net.Dial("tcp", "127.0.0.1:"+rport)
		if err != nil {
			w.WriteHeader(502)
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		key := strings.TrimPrefix(req.URL.Path, "/item/")
		call(c, r, "SET", key, "v-"+key)
		w.Write([]byte(call(c, r, "GET", key)))
	})
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	http.Serve(l, nil)
}
"""


def build_go(source, out_dir, flags=()):
    """`go build` of one main package (standard library only, no network),
    with more of go build's flags ("-ldflags=-s -w": a stripped binary)."""
    src = os.path.join(out_dir, "main.go")
    with open(src, "w") as f:
        f.write(source)
    exe = os.path.join(out_dir, "goweb")
    env = dict(os.environ, GOCACHE=os.path.join(out_dir, "gocache"), GOPATH=os.path.join(out_dir, "gopath"),
               GO111MODULE="off", GOFLAGS="", GOTOOLCHAIN="local")
    subprocess.run(["go", "build", *flags, "-o", exe, src], env=env, cwd=out_dir, check=True, capture_output=True)
    return exe


class MariaDB:
    """A throw-away MariaDB server (Debian's mariadb-server) on a free
    loopback port, without grant tables (no password), run as mysql."""

    def __init__(self):
        import pwd
        import shutil
        import tempfile

        pw = pwd.getpwnam("mysql")
        self.dir = tempfile.mkdtemp(prefix="dkebpf-maria-")
        self._rm = shutil.rmtree
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=mysql", "--skip-test-db",
                        "--auth-root-authentication-method=normal"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.dir}/sock", f"--pid-file={self.dir}/pid", "--user=mysql", "--skip-grant-tables",
             "--skip-ssl"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc, "mariadbd", timeout=60)
        except BaseException:
            self.stop()
            raise

    def client(self, sql, env=None, delay=2.5):
        """The mariadb client over TCP, started through a waiting shell
        (see TracedApps.curl)."""
        args = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "--skip-ssl",
                "-e", sql]
        return start_after(delay, args, dict(env or os.environ),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        stop_process(self.proc, 30)
        self._rm(self.dir, ignore_errors=True)
