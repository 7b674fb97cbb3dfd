"""An nginx serving HTTPS on a free loopback port with a self-signed
certificate made for the test, and curl -k as its client. Both link
OpenSSL's libssl, so both ends of every request pass through the uprobes."""
import os
import shutil
import socket
import subprocess
import time

from support.nginx import free_port

# path -> (status, body); `return` needs no files, so the worker never
# touches the disk
ROUTES = {
    "/tls/ok": (200, "ok\n"),
    "/tls/created": (201, "created\n"),
    "/tls/missing": (404, None),
    "/tls/broken": (503, None),
}

CONF = """worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000;
    server {{
        listen {host}:{port} ssl{http2};
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
{routes}
    }}
}}
"""


def make_cert(tmp):
    """A self-signed certificate and key for localhost in tmp."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", os.path.join(tmp, "key.pem"),
                    "-out", os.path.join(tmp, "cert.pem")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def private_libssl(tmp):
    """A copy of the system libssl in its own directory: another file
    (another inode) for LD_LIBRARY_PATH, which the collector can only find by
    scanning the processes that map it."""
    src = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    d = os.path.join(tmp, "libssl-copy")
    os.makedirs(d, exist_ok=True)
    shutil.copy2(src, os.path.join(d, "libssl.so.3"))
    return d


class TlsNginx:
    def __init__(self, tmp, host="127.0.0.1", lib_dir=None, name=None, http2=False):
        self.tmp = str(tmp)
        self.http2 = http2  # HTTP/2 offered by ALPN (and HTTP/1.1)
        self.name = name  # run as this name (comm), through a link: chosen by a process list
        self.host = host
        self.lib_dir = lib_dir
        self.port = None
        self.proc = None

    def start(self):
        if not os.path.exists(os.path.join(self.tmp, "cert.pem")):
            make_cert(self.tmp)
        self.port = free_port(self.host)
        routes = []
        for path, (status, body) in ROUTES.items():
            ret = f'return {status} "{body.strip()}\\n";' if body else f"return {status};"
            routes.append(f"        location = {path} {{ {ret} }}")
        listen = f"[{self.host}]" if ":" in self.host else self.host
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(tmp=self.tmp, host=listen, port=self.port, routes="\n".join(routes),
                                http2=" http2" if self.http2 else ""))
        env = dict(os.environ)
        if self.lib_dir:
            env["LD_LIBRARY_PATH"] = self.lib_dir
        exe = "nginx"
        if self.name:
            exe = os.path.join(self.tmp, self.name)
            if not os.path.exists(exe):
                os.symlink(shutil.which("nginx") or "/usr/sbin/nginx", exe)
        self.proc = subprocess.Popen([exe, "-c", conf, "-p", self.tmp], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not listen")
        # the worker: the process that serves the requests
        end = time.monotonic() + 5
        while time.monotonic() < end:
            kids = self.worker_pids()
            if kids:
                self.worker = kids[0]
                return self
            time.sleep(0.05)
        raise RuntimeError("no nginx worker")

    def worker_pids(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def url(self, path):
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{h}:{self.port}{path}"

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def curl(urls, method="GET", http1=True, env=None):
    """One curl process fetching urls over one kept-alive TLS connection;
    returns (pid, [status codes])."""
    args = ["curl", "-k", "-s", "-w", "%{http_code}\\n", "-X", method]
    if http1:
        args.append("--http1.1")  # HTTP/2 frames are not HTTP/1.x text
    for url in urls:
        args += ["-o", "/dev/null", url]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    out, err = p.communicate(timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"curl failed ({p.returncode}): {err}")
    return p.pid, [int(x) for x in out.split()]
