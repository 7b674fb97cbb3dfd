"""What `dkebpf run` imports costs resident memory (README "Resources"):
modules a run without Kubernetes tags, an HTTP output or the debug server
does not use stay unimported. Each costs MiBs: requests + urllib3 ~14,
http.client/ssl (OpenSSL's libcrypto) ~6, http.server ~7."""
import subprocess
import sys

HEAVY = ("requests", "urllib3", "charset_normalizer", "ssl", "http", "email", "hashlib")


def imported_after(code):
    probe = f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    return subprocess.check_output([sys.executable, "-c", probe], text=True).strip()


def test_a_run_imports_none_of_the_heavy_modules_it_does_not_use():
    code = ("from dkebpf import cli, agent, debug_server; "
            "from dkebpf.plugins import netflow, httpflow, dnsflow, bash, conntrack, httpflow_tls; "
            "from dkebpf.output.sink import open_sink; open_sink('/dev/null', None).close(1)")
    assert imported_after(code) == "[]"


def test_the_http_output_imports_http_client_only_when_it_sends():
    code = "from dkebpf.output.sink import open_sink; s = open_sink(None, '127.0.0.1:9'); s.close(0.1)"
    assert imported_after(code) == "[]"
