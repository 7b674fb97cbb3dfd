"""What `dkebpf run` imports costs resident memory (README "Resources"):
modules a run without Kubernetes tags, an HTTP output or the debug server
does not use stay unimported. Each costs MiBs: requests + urllib3 ~14,
http.client/ssl (OpenSSL's libcrypto) ~6, http.server ~7, pyarrow.dataset
(pulled in by Table.group_by through pyarrow.acero: the S3/GCS/Azure
filesystems, parquet, csv, ssl) ~17."""
import os
import subprocess
import sys

import pyarrow as pa
import pytest

HEAVY = ("requests", "urllib3", "charset_normalizer", "ssl", "http", "email", "hashlib")
HEAVY_ARROW = ("pyarrow.acero", "pyarrow.dataset", "pyarrow.fs", "pyarrow._s3fs", "pyarrow.parquet",
               "pyarrow._parquet", "pyarrow._csv")


def imported_after(code, names=HEAVY):
    probe = (f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({names!r}) "
             f"| set(sys.modules) & set({names!r})))")
    return subprocess.check_output([sys.executable, "-c", probe], text=True).strip()


def test_a_run_imports_none_of_the_heavy_modules_it_does_not_use():
    code = ("from dkebpf import cli, agent, debug_server; "
            "from dkebpf.plugins import netflow, httpflow, dnsflow, bash, conntrack, httpflow_tls; "
            "from dkebpf.output.sink import open_sink; open_sink('/dev/null', None).close(1)")
    assert imported_after(code) == "[]"


def test_the_http_output_imports_http_client_only_when_it_sends():
    code = "from dkebpf.output.sink import open_sink; s = open_sink(None, '127.0.0.1:9'); s.close(0.1)"
    assert imported_after(code) == "[]"


def test_kubernetes_tags_without_a_token_import_no_api_client(tmp_path):
    # the default configuration outside a pod: no token file, so no
    # requests/urllib3/ssl for an API that will never be called
    code = ("import logging; from types import SimpleNamespace as N; "
            "from dkebpf.enrich.k8s import K8sEnrichment; "
            f"cfg = N(bearer_token={str(tmp_path / 'no-token')!r}, bearer_token_string=''); "
            "assert K8sEnrichment.from_config(cfg, logging.getLogger('t')) is None")
    assert imported_after(code) == "[]"


def test_the_plugins_aggregations_import_no_dataset_or_filesystem_module():
    # the plugins' own merges of two steps' partial sums (two equal rows -> one)
    code = ("import pyarrow as pa; from dkebpf.plugins import httpflow as h, dnsflow as d; "
            "row = lambda names: pa.table({n: [1] for n in names}); "
            "assert h.merge_partials([row(h.RAW_KEYS + h.PARTIAL_SUMS)] * 2).num_rows == 1; "
            "assert d.combine([row(d.GROUP_KEYS + ['count', 'latency_sum', 'latency_max'])] * 2).num_rows == 1")
    assert imported_after(code, HEAVY_ARROW) == "[]"


@pytest.mark.parametrize("keys", [["k"], ["k", "j"], []])
def test_group_by_gives_what_table_group_by_gives(keys):
    t = pa.table({"k": ["a", "b", "a", None, "b"], "j": [1, 1, 2, 2, 1],
                  "v": pa.array([1, 2, 3, None, 5], pa.uint64()), "w": [0.5, 1.0, 2.0, 4.0, 8.0]})
    aggs = [("v", "sum"), ("v", "count"), ("w", "max"), ("w", "sum")]
    from dkebpf.groupby import group_by

    got = group_by(t, keys, aggs)
    want = t.group_by(keys, use_threads=False).aggregate(aggs)
    assert got.column_names == want.column_names
    order = [(k, "ascending") for k in keys]
    assert got.sort_by(order).equals(want.sort_by(order)) if keys else got.equals(want)


POOL_AFTER_CLI = ("from dkebpf.cli import main; main(['version']); import os, pyarrow; "
                  "print(pyarrow.default_memory_pool().backend_name, os.environ['OPENBLAS_NUM_THREADS'])")


def pool_after_cli(**env):
    clean = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "OPENBLAS_NUM_THREADS")}
    out = subprocess.check_output([sys.executable, "-c", POOL_AFTER_CLI], text=True, env={**clean, **env})
    return out.split()[-2:]


def test_the_cli_gives_arrow_the_system_allocator_and_openblas_one_thread():
    # Acero's group-by allocates from Arrow's C++ default pool, which
    # pa.set_memory_pool does not change: only the variable, read when
    # libarrow loads, keeps mimalloc (and its ~20 MiB kept) out
    assert pool_after_cli() == ["system", "1"]


def test_a_users_own_pool_and_thread_settings_win():
    assert pool_after_cli(ARROW_DEFAULT_MEMORY_POOL="mimalloc", OPENBLAS_NUM_THREADS="2") == ["mimalloc", "2"]


def test_the_libraries_pages_released_fault_back_in_unchanged():
    # after the release, numpy and pyarrow run again from the page cache:
    # the same results, and only what they used is resident again; the
    # agent releases after every flush, so again and again
    code = ("import numpy as np, pyarrow as pa; from dkebpf.agent import release_library_pages; "
            "from dkebpf.groupby import group_by; "
            "rss = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssFile')); "
            "t = pa.table({'k': np.arange(100000) % 7, 'v': np.arange(100000)}); "
            "want = group_by(t, ['k'], [('v', 'sum')]).sort_by('k'); before = rss(); "
            "released = release_library_pages(); after = rss(); "
            "got = group_by(t, ['k'], [('v', 'sum')]).sort_by('k'); "
            "print(released > 0, after < before / 2, got.equals(want), int(np.sort(np.arange(9)[::-1])[0])); "
            "grown = rss(); released = release_library_pages(); "
            "got = group_by(t, ['k'], [('v', 'sum')]).sort_by('k'); "
            "print(released > 0, rss() <= grown, got.equals(want))")
    out = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert out == ["True"] * 3 + ["0"] + ["True"] * 3


def test_the_release_reads_smaps_again_only_when_the_mappings_change():
    # smaps walks every page table (~10 ms a flush); /proc/self/maps tells
    # whether the qualifying mappings can have changed (a library loaded;
    # not an anonymous mapping)
    code = ("import numpy, pyarrow; from dkebpf.agent import LibraryPages; pages = LibraryPages(); "
            "first = pages.release(); pages.release(); buf = numpy.ones(1 << 20); "
            "pages.release(); same = pages.smaps_reads; "
            "import _sqlite3; numpy.arange(1000).sum(); again = pages.release(); "
            "print(first > 0, same, pages.smaps_reads, again > 0)")
    out = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert out == ["True", "1", "2", "True"]


def test_between_flushes_the_release_waits_for_the_libraries_to_grow():
    # an idle collector reads /proc/self/status, not its mappings; after
    # work that faulted library pages back in, it releases them
    code = ("import numpy, pyarrow, pyarrow.compute as pc; from dkebpf.agent import LibraryPages; "
            "pages = LibraryPages(); "
            "pages.release(); idle = pages.release_if_grown(1 << 20); "
            "a = pyarrow.array(numpy.arange(100000)); [pc.sum(pc.multiply(a, 3)) for _ in range(3)]; "
            "pyarrow.Table.from_arrays([a], ['x']).sort_by('x'); pc.unique(a); "
            "grown = pages.release_if_grown(1 << 20); print(idle, grown > 0)")
    out = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert out == ["0", "True"]
