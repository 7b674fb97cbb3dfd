/* Which user memory a socket call moved, seen from tp_btf/sock_send_length
 * and tp_btf/sock_recv_length, without any syscall tracepoint.
 *
 * Those two tracepoints fire in sock_sendmsg_nosec / sock_recvmsg_nosec
 * right after the protocol moved the data: for a receive the bytes are
 * already in the user's buffer, for a send they are still there. The
 * calling task's saved user registers (bpf_task_pt_regs) hold the syscall
 * number (orig_ax) and its arguments, so the buffer, the iovecs and a
 * send's destination address can be read from there.
 *
 * What this does NOT describe, by design (callers count it as "not
 * covered", never guess):
 *   - kernel threads and io_uring workers (their saved registers are not a
 *     socket syscall of the task);
 *   - io_uring, sendmmsg/recvmmsg (which message of the vector?), and any
 *     other syscall whose registers do not describe this buffer;
 *   - the source address of recvfrom/recvmsg: the kernel copies it to user
 *     memory only after the protocol returns (see cgroup/recvmsg4/6);
 *   - sendfile/splice: bytes only (SYSIO_BYTES), no user buffer;
 *   - a socket call the kernel makes inside another syscall of the task
 *     (NFS/iSCSI in a file read, ...): the registers describe that other
 *     call. syscall_io_fd_is() tells it: check before interpreting bytes.
 *
 * Verified on the kernel by bpf/http.bpf.c's tests (tests/kernel/
 * test_http_bpf.py: sendto, recvfrom, writev, sendmsg with two iovecs,
 * recvmsg, readv, write, sendfile, both ends, IPv4 and IPv6).
 *
 * x86_64 only (vmlinux/x86): syscall numbers and registers below.
 * BPF side only; needs vmlinux.h, bpf_tracing.h, bpf_core_read.h. */
#ifndef DKEBPF_SYSCALL_IO_H
#define DKEBPF_SYSCALL_IO_H

/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) */
#define SYSNR_READ 0
#define SYSNR_WRITE 1
#define SYSNR_READV 19
#define SYSNR_WRITEV 20
#define SYSNR_SENDFILE 40
#define SYSNR_SENDTO 44
#define SYSNR_RECVFROM 45
#define SYSNR_SENDMSG 46
#define SYSNR_RECVMSG 47
#define SYSNR_SPLICE 275
#define SYSNR_PREADV 295  /* not a socket call but reaches sock_read_iter */
#define SYSNR_PWRITEV 296
#define SYSNR_PREADV2 327
#define SYSNR_PWRITEV2 328

#define PF_KTHREAD_ 0x00200000  /* include/linux/sched.h */
#define PF_IO_WORKER_ 0x00000010

/* how the call passes its data */
#define SYSIO_NONE 0  /* not covered (see above) */
#define SYSIO_BUF 1   /* (ptr, len): read/write/sendto/recvfrom */
#define SYSIO_IOV 2   /* (struct iovec *ptr, count): readv/writev/p*v* */
#define SYSIO_MSG 3   /* struct user_msghdr *ptr: sendmsg/recvmsg */
#define SYSIO_BYTES 4 /* sendfile/splice: bytes only */

struct syscall_io {
	__u64 ptr;   /* buf, iovec array or msghdr (user pointers) */
	__u64 addr;  /* send: user pointer to the destination sockaddr, or 0 */
	__u32 count; /* iovcnt (SYSIO_IOV), buffer length (SYSIO_BUF) */
	__u32 addrlen;
	__u32 flags; /* MSG_* flags of the call (0 where it has none) */
	__s32 fd;    /* the call's file descriptor (first argument; out fd of sendfile/splice: see below) */
	__u16 nr;    /* syscall number */
	__u8 kind;   /* SYSIO_* */
	__u8 _pad;
};

/* Describe the current task's socket syscall. Returns io->kind. */
static __always_inline int syscall_io_get(struct syscall_io *io)
{
	struct task_struct *task = bpf_get_current_task_btf();
	io->kind = SYSIO_NONE;
	if (task->flags & (PF_KTHREAD_ | PF_IO_WORKER_))
		return SYSIO_NONE;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	long nr = regs->orig_ax;
	io->nr = (__u16)nr;
	io->addr = 0;
	io->addrlen = 0;
	io->flags = 0;
	io->fd = (__s32)regs->di;
	/* x86_64 syscall arguments: di, si, dx, r10, r8, r9 */
	__u64 a1 = regs->si, a2 = regs->dx;
	switch (nr) {
	case SYSNR_READ:
	case SYSNR_WRITE:
		io->kind = SYSIO_BUF;
		break;
	case SYSNR_SENDTO:
		io->addr = regs->r8;
		io->addrlen = (__u32)regs->r9;
		/* fall through */
	case SYSNR_RECVFROM:
		io->flags = (__u32)regs->r10;
		io->kind = SYSIO_BUF;
		break;
	case SYSNR_READV:
	case SYSNR_WRITEV:
	case SYSNR_PREADV:
	case SYSNR_PWRITEV:
	case SYSNR_PREADV2:
	case SYSNR_PWRITEV2:
		io->kind = SYSIO_IOV;
		break;
	case SYSNR_SENDMSG:
	case SYSNR_RECVMSG:
		io->flags = (__u32)a2;
		io->kind = SYSIO_MSG;
		break;
	case SYSNR_SENDFILE:
	case SYSNR_SPLICE:
		io->kind = SYSIO_BYTES;
		break;
	default:
		return SYSIO_NONE;
	}
	io->ptr = a1;
	io->count = (__u32)a2;
	return io->kind;
}

/* Is the call's file descriptor this socket? The tracepoints also fire
 * for socket calls the kernel makes inside another syscall of the task
 * (an NFS or iSCSI transfer in a read() of a file, a splice): then the
 * registers describe another buffer. One fd table walk, so a caller does
 * it only before it interprets the bytes (http.bpf.c: before a socket's
 * first message; those kernel-made calls go to kernel sockets, which so
 * never get an entry), not per call.
 * For sendfile/splice the fd is not the socket's in general: SYSIO_BYTES
 * callers count bytes only and need not ask. */
static __always_inline int syscall_io_fd_is(const struct syscall_io *io, struct sock *sk_any)
{
	if (io->fd < 0)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	if ((unsigned int)io->fd >= fdt->max_fds)
		return 0;
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fdt->fd[io->fd]) || !f)
		return 0;
	/* a socket file's private_data is its struct socket (sock_alloc_file) */
	void *priv = 0;
	if (bpf_probe_read_kernel(&priv, sizeof(priv), &f->private_data))
		return 0;
	struct socket *sock = BPF_CORE_READ(sk_any, sk_socket);
	return sock && priv == (void *)sock;
}

/* The user iovecs of an IOV or MSG call, up to `max` of them, read once
 * into `vs` (an array of at least `max`). For a MSG call of a send, also
 * the destination address (msg_name) into io->addr/addrlen. Returns how
 * many were read, 0 for a BUF call, SYSIO_IOV_NONE when nothing is
 * readable. `max` must be a compile-time constant. */
#define SYSIO_IOV_NONE (-1)
#define syscall_io_iovecs(io, vs, max)                                                          \
	({                                                                                      \
		int __n = 0;                                                                    \
		struct iovec *__iov = 0;                                                        \
		__u32 __cnt = 0;                                                                \
		if ((io)->kind == SYSIO_IOV) {                                                  \
			__iov = (struct iovec *)(io)->ptr;                                      \
			__cnt = (io)->count;                                                    \
		} else if ((io)->kind == SYSIO_MSG) {                                           \
			struct user_msghdr __m = {};                                            \
			if (bpf_probe_read_user(&__m, sizeof(__m), (void *)(io)->ptr)) {        \
				__n = SYSIO_IOV_NONE;                                           \
			} else {                                                                \
				__iov = __m.msg_iov;                                            \
				__cnt = (__u32)__m.msg_iovlen;                                  \
				(io)->addr = (__u64)__m.msg_name;                               \
				(io)->addrlen = __m.msg_namelen;                                \
			}                                                                       \
		}                                                                               \
		if (__n == 0 && (io)->kind != SYSIO_BUF) {                                      \
			if (!__cnt) {                                                           \
				__n = SYSIO_IOV_NONE;                                           \
			} else {                                                                \
				if (__cnt > (max))                                              \
					__cnt = (max);                                          \
				/* the barrier keeps clang from bounds-checking another copy  \
				 * of the size than the one the verifier sees */              \
				__u64 __size = (__u64)__cnt * sizeof(struct iovec);             \
				asm volatile("" : "+r"(__size));                                \
				if (__size > (max) * sizeof(struct iovec) ||                    \
				    bpf_probe_read_user((vs), __size, __iov))                    \
					__n = SYSIO_IOV_NONE;                                   \
				else                                                            \
					__n = __cnt;                                            \
			}                                                                       \
		}                                                                               \
		__n;                                                                            \
	})

#endif
