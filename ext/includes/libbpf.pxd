# Declarations of libbpf 1.x (Debian libbpf-dev): bpf/libbpf.h, bpf/bpf.h,
# bpf/btf.h. Declarations only; the binding is ext/libbpf.pyx.
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "bpf/libbpf.h" nogil:
    struct bpf_object
    struct bpf_program
    struct bpf_map
    struct bpf_link
    struct btf

    bpf_object *bpf_object__open_file(const char *path, const void *opts)
    int bpf_object__load(bpf_object *obj)
    void bpf_object__close(bpf_object *obj)
    btf *bpf_object__btf(const bpf_object *obj)

    bpf_program *bpf_object__next_program(const bpf_object *obj, bpf_program *prog)
    bpf_program *bpf_object__find_program_by_name(const bpf_object *obj, const char *name)
    const char *bpf_program__name(const bpf_program *prog)
    const char *bpf_program__section_name(const bpf_program *prog)
    bint bpf_program__autoload(const bpf_program *prog)
    bpf_link *bpf_program__attach(const bpf_program *prog)

    struct bpf_uprobe_opts:
        size_t sz
        size_t ref_ctr_offset
        uint64_t bpf_cookie
        bint retprobe
        const char *func_name
    bpf_link *bpf_program__attach_uprobe_opts(const bpf_program *prog, int pid,
                                              const char *binary_path, size_t func_offset,
                                              const bpf_uprobe_opts *opts)
    bpf_link *bpf_program__attach_cgroup(const bpf_program *prog, int cgroup_fd)
    int bpf_link__destroy(bpf_link *link)

    bpf_map *bpf_object__next_map(const bpf_object *obj, const bpf_map *map)
    bpf_map *bpf_object__find_map_by_name(const bpf_object *obj, const char *name)
    const char *bpf_map__name(const bpf_map *map)
    int bpf_map__fd(const bpf_map *map)
    int bpf_program__fd(const bpf_program *prog)
    int bpf_map__type(const bpf_map *map)
    uint32_t bpf_map__key_size(const bpf_map *map)
    uint32_t bpf_map__value_size(const bpf_map *map)
    uint32_t bpf_map__max_entries(const bpf_map *map)
    int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)
    int bpf_map__reuse_fd(bpf_map *map, int fd)
    const void *bpf_map__initial_value(bpf_map *map, size_t *psize)

    int libbpf_num_possible_cpus()

cdef extern from "bpf/bpf.h" nogil:
    struct bpf_map_batch_opts:
        size_t sz
        uint64_t elem_flags
        uint64_t flags
    int bpf_map_lookup_elem(int fd, const void *key, void *value)
    int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)
    int bpf_map_delete_elem(int fd, const void *key)
    int bpf_map_lookup_and_delete_elem(int fd, const void *key, void *value)
    int bpf_map_get_next_key(int fd, const void *key, void *next_key)
    int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys,
                             void *values, uint32_t *count, const bpf_map_batch_opts *opts)

cdef extern from "bpf/btf.h" nogil:
    struct btf_type:
        uint32_t name_off
        uint32_t info
        uint32_t type
    struct btf_var_secinfo:
        uint32_t type
        uint32_t offset
        uint32_t size
    enum:
        BTF_KIND_DATASEC
    int btf__find_by_name_kind(const btf *btf, const char *type_name, uint32_t kind)
    const btf_type *btf__type_by_id(const btf *btf, uint32_t id)
    const char *btf__name_by_offset(const btf *btf, uint32_t offset)
    unsigned short btf_vlen(const btf_type *t)
    btf_var_secinfo *btf_var_secinfos(const btf_type *t)

cdef extern from "dk_libbpf_log.h" nogil:
    void dk_log_install(int verbose)
    void dk_log_clear()
    const char *dk_log_text()

cdef extern from "dk_ringbuf.h" nogil:
    struct dk_ring:
        int map_fd
        char *buf
        size_t record_size, n, cap, max_records, min_size
        uint64_t received, bad_size
    int dk_ring_open(dk_ring *r, int map_fd, size_t record_size, size_t initial, size_t max_records)
    void dk_ring_close(dk_ring *r)
    size_t dk_ring_consume(dk_ring *r)
    size_t dk_ring_pending_bytes(const dk_ring *r)
    size_t dk_ring_consume_to(dk_ring *r, char *dest, size_t cap)
