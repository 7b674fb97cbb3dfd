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


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_declared_names_exist_in_the_object(name):
    assert problems(OBJECTS[name]) == []


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
