"""Real servers the e2e tests run inside their network namespaces:
Python's http.server (dnsmasq and dig: support/dnsmasq.py)."""
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


# A keep-alive HTTP/1.1 server answering every GET with "ok", as a script
# (`python3 -c OK_SERVER HOST PORT`, prints "ready"): for tests that start it
# inside a namespace and read its output.
OK_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
s = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""
