"""An nginx started by a test (or a benchmark) with its own prefix and
config in a temporary directory, listening on a free loopback port."""
import os
import shutil
import socket
import subprocess
import time

LONG_PREFIX = "/long/"


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


CONFIG = """
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen {host}:{port};
        location = /ok {{ return 200 "ok\\n"; }}
        location = /missing {{ return 404 "missing\\n"; }}
        location = /boom {{ return 500 "boom\\n"; }}
        location {long} {{ return 200 "long\\n"; }}
        # reads the request body (to pass it on), so it answers
        # "Expect: 100-continue" with an interim 100 before the final status;
        # in memory: the workers may not write to a test's private tmp dir
        location = /upload {{ client_body_buffer_size 128k; proxy_pass http://{host}:{port}/ok; }}
    }}
}}
"""


class Nginx:
    def __init__(self, tmpdir, host="127.0.0.1", workers=1):
        self.prefix = os.path.join(str(tmpdir), "nginx")
        os.makedirs(self.prefix, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(CONFIG.format(prefix=self.prefix, host=host, port=self.port, workers=workers,
                                  long=LONG_PREFIX))
        self.proc = None

    def __enter__(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", self.prefix, "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown, master stops its workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
