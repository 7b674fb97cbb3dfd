/* The HTTP/2 "whole frames" rule, one copy compiled twice: by the BPF
 * programs (include/trace_span.bpf.h span_h2_mark, for bpf/trace.bpf.c and
 * bpf/tls.bpf.c) and by user space (ext/includes/h2frame.pxd, for
 * ext/h2trace.pyx), so the kernel and the tracker cannot disagree about
 * which calls of a connection seen mid-stream are HTTP/2.
 * tests/kernel/test_h2frame_rule.py runs both builds on the same inputs. */
#ifndef DKEBPF_H2FRAME_H
#define DKEBPF_H2FRAME_H

#include "trace.h"

#define H2_DETECT_FRAMES 8
_Static_assert((TRACE_PAYLOAD_MAX & (TRACE_PAYLOAD_MAX - 1)) == 0, "h2_frames_exact masks offsets");

/* A connection that opened before tracing (its preface not seen): is this
 * message start, captured whole (n <= TRACE_PAYLOAD_MAX bytes at p), a run
 * of at most H2_DETECT_FRAMES HTTP/2 frames (RFC 9113 4.1, 6) ending
 * exactly at its end? Each header: a registered type (DATA..CONTINUATION),
 * the reserved bit clear, no flag the type does not define, the stream
 * rules of the type, the fixed lengths of PRIORITY, RST_STREAM, SETTINGS,
 * PING, WINDOW_UPDATE and GOAWAY's least. Plain text (HTTP/1, RESP, SQL)
 * and other binary protocols fail at the first header (its length past
 * the call), so the check costs one header there. */
static __always_inline int h2_frames_exact(const __u8 *p, __u32 n)
{
	__u32 off = 0;
	for (int i = 0; i < H2_DETECT_FRAMES; i++) {
		if (off > TRACE_PAYLOAD_MAX - 9 || off + 9 > n)
			return 0;
#ifdef __bpf__
		/* the bound again where the verifier sees it (a no-op: off is
		 * below TRACE_PAYLOAD_MAX, a power of two); user space has no
		 * verifier to convince */
		barrier_var(off);
#endif
		const __u8 *h = p + (off & (TRACE_PAYLOAD_MAX - 1));
		__u32 len = ((__u32)h[0] << 16) | ((__u32)h[1] << 8) | h[2];
		__u8 type = h[3], flags = h[4];
		__u32 stream = ((__u32)(h[5] & 0x7f) << 24) | ((__u32)h[6] << 16) | ((__u32)h[7] << 8) | h[8];
		if (h[5] & 0x80 || type > 9)
			return 0;
		/* the flags each type defines: END_STREAM 0x1, ACK 0x1,
		 * END_HEADERS 0x4, PADDED 0x8, PRIORITY 0x20 */
		static const __u8 allowed[10] = {0x09, 0x2d, 0, 0, 0x01, 0x0c, 0x01, 0, 0, 0x04};
		if (flags & ~allowed[type])
			return 0;
		/* stream frames on a stream, connection frames on 0 (WINDOW_UPDATE: either) */
		if ((type == 4 || type == 6 || type == 7) != (stream == 0) && type != 8)
			return 0;
		if ((type == 2 && len != 5) || (type == 3 && len != 4) || (type == 4 && len % 6) ||
		    (type == 6 && len != 8) || (type == 7 && len < 8) || (type == 8 && len != 4))
			return 0;
		off += 9 + len;
		if (off == n)
			return 1;
	}
	return 0;
}

#endif /* DKEBPF_H2FRAME_H */
