"""Every name dkebpf/bpf_objects.py declares for a BPF object (knobs,
programs, maps, rings, drop counters) exists in the compiled object, so a
typo fails here and not when the collector starts. Opening an object reads
only its ELF file: no privileges, no kernel needed."""
import dataclasses
import glob
import os

import pytest

from dkebpf import _libbpf
from dkebpf.bpf_objects import BPF_DIR, OBJECTS
from dkebpf.plugins import tls_probes

BPF_MAP_TYPE_RINGBUF = 27


def problems(spec):
    """What spec declares that its compiled object does not have."""
    out = []
    with _libbpf.BpfObject(spec.path) as obj:
        progs = {p.name for p in obj.programs()}
        out += [f"program {name}" for name in spec.program_names() if name not in progs]
        maps = {}
        for name in spec.map_names():
            try:
                maps[name] = obj.map(name)
            except LookupError:
                out.append(f"map {name}")
        knobs = obj.knobs()
        out += [f"knob {name}" for name in spec.knobs if name not in knobs]
        for ring in spec.rings:
            if ring.map in maps and maps[ring.map].map_type != BPF_MAP_TYPE_RINGBUF:
                out.append(f"ring {ring.map} is not a ring buffer")
        if spec.drops in maps:
            drops = maps[spec.drops]
            if drops.map_type != _libbpf.BPF_MAP_TYPE_PERCPU_ARRAY or drops.value_size != 8:
                out.append(f"drops {spec.drops} is not a per-CPU array of u64")
            if sorted(spec.drop_names) != list(range(len(spec.drop_names))):
                out.append(f"drop counter indexes {sorted(spec.drop_names)} have gaps")
            if len(spec.drop_names) != drops.max_entries:
                out.append(f"{len(spec.drop_names)} drop counters named, {spec.drops} holds "
                           f"{drops.max_entries}")
    return out


@pytest.mark.parametrize("name", sorted(OBJECTS) + ["tls_trace"])
def test_declared_names_exist_in_the_object(name):
    from dkebpf.bpf_objects import TLS_TRACE  # a second spec of tls.bpf.o (ebpf-trace's)

    assert problems(TLS_TRACE if name == "tls_trace" else OBJECTS[name]) == []


def test_every_shipped_object_is_declared():
    shipped = {os.path.basename(p)[:-len(".bpf.o")] for p in glob.glob(os.path.join(BPF_DIR, "*.bpf.o"))}
    assert shipped == set(OBJECTS)


def test_a_typo_is_caught():
    netflow = OBJECTS["netflow"]
    typo = dataclasses.replace(netflow, knobs=("self_tgidd",), maps=("bound_port",),
                               drop_names={**netflow.drop_names, 9: "x"})
    n = len(netflow.drop_names)
    assert problems(typo) == ["map bound_port", "knob self_tgidd",
                              f"drop counter indexes {sorted(typo.drop_names)} have gaps",
                              f"{n + 1} drop counters named, drops holds {n}"]
    tls = OBJECTS["tls"]
    assert problems(dataclasses.replace(tls, programs=tls.programs + ("ssl_reed_enter",))) == \
        ["program ssl_reed_enter"]


def test_tls_probe_tables_name_declared_programs():
    tables = tls_probes.REQUIRED_FUNCS + tls_probes.OPTIONAL_FUNCS + tls_probes.HANDSHAKE_FUNCS
    used = {prog for _, prog in tables} | {tls_probes.RETURN_PROG}
    assert used <= set(OBJECTS["tls"].programs)


def test_ring_budgets_hold_the_wakeup_point_plus_the_stall_at_the_rate():
    from dkebpf.bpf_objects import DRAIN_STALL_S, PAGE_BYTES, RING_MARGIN, ring_bytes

    one_mib = lambda size: 1 << 20  # noqa: E731
    for ncpus in (1, 2, 8, 64):
        for rate in (0, 1000, 40_000, 400_000):
            size = ring_bytes(160, rate, one_mib, ncpus=ncpus)
            need = (1 << 20) * (1 + ncpus / 16) + RING_MARGIN * rate * DRAIN_STALL_S * 168
            assert size & (size - 1) == 0 and size % PAGE_BYTES == 0  # the kernel's rule
            assert need <= size < 2 * need  # the smallest that holds it
    # a reader woken at a fraction of the ring (httpflow-tls) still gets the stall's room
    size = ring_bytes(160, 20_000, lambda s: s // 32, ncpus=2)
    assert size - size // 32 * (1 + 2 / 16) >= RING_MARGIN * 20_000 * DRAIN_STALL_S * 168


def test_every_ring_is_sized_by_a_budget_not_by_its_declaration():
    # the sizes user space sets before load (Ring.max_bytes); bash's 1 MiB
    # ring keeps the .bpf.c's declaration; ebpf-trace's (4 records of ~200
    # bytes per request at wrk's full rate) is the one above 16 MiB
    sized = {(name, r.map): r.max_bytes for name, spec in OBJECTS.items() for r in spec.rings if r.max_bytes}
    assert set(sized) == {("netflow", "closed"), ("http", "events"), ("tls", "events"), ("trace", "events")}
    assert all(b & (b - 1) == 0 and b <= 16 << 20 for k, b in sized.items() if k[0] != "trace")
    assert 16 << 20 < sized["trace", "events"] <= 32 << 20
