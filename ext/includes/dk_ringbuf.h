/* A BPF ring buffer consumer that copies fixed-size records straight into a
 * growable C array: the same protocol as libbpf's ring_buffer__consume
 * (kernel/bpf/ringbuf.c: 8-byte header {u32 len | BUSY | DISCARD, u32
 * pg_off}, records 8-byte aligned), without an indirect call per record, and
 * publishing the consumer position once per batch instead of once per record
 * (the producer only needs it to reclaim space). Plain C, called without the
 * GIL.
 *
 * The kernel offers the data pages twice in a row so that a record never
 * wraps; libbpf maps both copies, which puts every data page in the
 * process's RSS twice (the mapping is populated at mmap time). We map the
 * data once and copy a record that wraps in two pieces: a header never wraps
 * (8-byte aligned, the size a multiple of the page size). */
#ifndef DK_RINGBUF_H
#define DK_RINGBUF_H
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>

struct dk_ring {
	int map_fd;
	size_t page_size;
	size_t mask;                 /* data size - 1 */
	unsigned long *consumer_pos; /* rw page */
	unsigned long *producer_pos; /* ro page, followed by the data once */
	char *data;
	size_t map_len;              /* of the producer page + data mapping */
	/* where records go */
	char *buf;
	size_t record_size, n, cap, max_records;
	/* records may be shorter than record_size down to min_size (a fixed
	 * header plus a variable payload): the slot's tail is then left as
	 * it was; the record says how much of it is valid */
	size_t min_size;
	uint64_t received, bad_size;
};

static int dk_ring_open(struct dk_ring *r, int map_fd, size_t record_size, size_t initial, size_t max_records)
{
	struct bpf_map_info info;
	uint32_t len = sizeof(info);
	void *tmp;
	memset(r, 0, sizeof(*r));
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(map_fd, &info, &len))
		return -errno;
	if (info.type != BPF_MAP_TYPE_RINGBUF)
		return -EINVAL;
	r->map_fd = map_fd;
	r->page_size = sysconf(_SC_PAGESIZE);
	r->mask = info.max_entries - 1;
	tmp = mmap(NULL, r->page_size, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
	if (tmp == MAP_FAILED)
		return -errno;
	r->consumer_pos = tmp;
	r->map_len = r->page_size + (size_t)info.max_entries;
	tmp = mmap(NULL, r->map_len, PROT_READ, MAP_SHARED, map_fd, r->page_size);
	if (tmp == MAP_FAILED) {
		int err = -errno;
		munmap(r->consumer_pos, r->page_size);
		return err;
	}
	r->producer_pos = tmp;
	r->data = (char *)tmp + r->page_size;
	r->record_size = record_size;
	r->min_size = record_size;
	r->cap = initial ? initial : 1;
	if (max_records && r->cap > max_records)
		r->cap = max_records; /* the budget wins over the first size */
	r->max_records = max_records > r->cap ? max_records : r->cap;
	r->buf = malloc(r->cap * record_size);
	return r->buf ? 0 : -ENOMEM;
}

static void dk_ring_close(struct dk_ring *r)
{
	if (r->consumer_pos)
		munmap(r->consumer_pos, r->page_size);
	if (r->producer_pos)
		munmap(r->producer_pos, r->map_len);
	free(r->buf);
	r->consumer_pos = NULL;
	r->producer_pos = NULL;
	r->buf = NULL;
}

static inline int dk_ring_reserve(struct dk_ring *r)
{
	size_t ncap;
	char *nbuf;
	if (r->n < r->cap)
		return 1;
	if (r->cap >= r->max_records)
		return 0;
	ncap = r->cap * 2 < r->max_records ? r->cap * 2 : r->max_records;
	nbuf = realloc(r->buf, ncap * r->record_size);
	if (!nbuf)
		return 0;
	r->buf = nbuf;
	r->cap = ncap;
	return 1;
}

/* Copy n bytes of the record whose header is at ring offset off into dst,
 * wrapping at the end of the (single) data mapping. */
static inline void dk_ring_copy(const struct dk_ring *r, char *dst, size_t off, size_t n)
{
	size_t start = (off + BPF_RINGBUF_HDR_SZ) & r->mask;
	size_t first = r->mask + 1 - start;
	if (n <= first) {
		memcpy(dst, r->data + start, n);
	} else {
		memcpy(dst, r->data + start, first);
		memcpy(dst + first, r->data, n - first);
	}
}

/* Copy every committed record out of the ring. Returns how many were read. */
static size_t dk_ring_consume(struct dk_ring *r)
{
	unsigned long cons = __atomic_load_n(r->consumer_pos, __ATOMIC_ACQUIRE);
	unsigned long prod = __atomic_load_n(r->producer_pos, __ATOMIC_ACQUIRE);
	size_t got = 0;
	while (cons < prod) {
		uint32_t *hdr = (uint32_t *)(r->data + (cons & r->mask));
		uint32_t raw = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
		uint32_t len = raw & ~BPF_RINGBUF_DISCARD_BIT;
		if (raw & BPF_RINGBUF_BUSY_BIT)
			break; /* reserved, not yet submitted: records after it wait */
		if (!(raw & BPF_RINGBUF_DISCARD_BIT)) {
			/* the buffer is at its budget: this record and the rest wait
			 * in the kernel ring (for take(), or a consume once the owner
			 * has emptied the buffer); if that fills, the BPF program
			 * counts what it cannot submit -- one place where drops happen */
			if (len >= r->min_size && !dk_ring_reserve(r))
				break;
			r->received++;
			if (len < r->min_size)
				r->bad_size++;
			else
				dk_ring_copy(r, r->buf + r->n++ * r->record_size, cons & r->mask,
					     len < r->record_size ? len : r->record_size);
			got++;
		}
		cons += (len + BPF_RINGBUF_HDR_SZ + 7) & ~7UL;
		if (cons >= prod) /* producer may have moved on meanwhile */
			prod = __atomic_load_n(r->producer_pos, __ATOMIC_ACQUIRE);
	}
	__atomic_store_n(r->consumer_pos, cons, __ATOMIC_RELEASE);
	return got;
}

/* Bytes committed or reserved in the ring right now: an upper bound for a
 * destination of records read next by dk_ring_consume_to. */
static size_t dk_ring_pending_bytes(const struct dk_ring *r)
{
	return __atomic_load_n(r->producer_pos, __ATOMIC_ACQUIRE) - __atomic_load_n(r->consumer_pos, __ATOMIC_ACQUIRE);
}

/* Copy up to cap records straight into dest (no intermediate buffer), up to
 * the producer position seen at entry. Returns how many were written. */
static size_t dk_ring_consume_to(struct dk_ring *r, char *dest, size_t cap)
{
	unsigned long cons = __atomic_load_n(r->consumer_pos, __ATOMIC_ACQUIRE);
	unsigned long prod = __atomic_load_n(r->producer_pos, __ATOMIC_ACQUIRE);
	size_t n = 0;
	while (cons < prod && n < cap) {
		uint32_t *hdr = (uint32_t *)(r->data + (cons & r->mask));
		uint32_t raw = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
		uint32_t len = raw & ~BPF_RINGBUF_DISCARD_BIT;
		if (raw & BPF_RINGBUF_BUSY_BIT)
			break;
		if (!(raw & BPF_RINGBUF_DISCARD_BIT)) {
			r->received++;
			if (len < r->min_size)
				r->bad_size++;
			else
				dk_ring_copy(r, dest + n++ * r->record_size, cons & r->mask,
					     len < r->record_size ? len : r->record_size);
		}
		cons += (len + BPF_RINGBUF_HDR_SZ + 7) & ~7UL;
	}
	__atomic_store_n(r->consumer_pos, cons, __ATOMIC_RELEASE);
	return n;
}
#endif
