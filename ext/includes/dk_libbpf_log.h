/* libbpf print callback that keeps the last messages, so a failed load or
 * attach can name the verifier's or libbpf's reason in its error message
 * instead of only an errno. Debug-level chatter is dropped. */
#ifndef DK_LIBBPF_LOG_H
#define DK_LIBBPF_LOG_H
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <bpf/libbpf.h>

#define DK_LOG_SIZE 8192
static char dk_log_buf[DK_LOG_SIZE];
static size_t dk_log_len;
static int dk_log_verbose;

static int dk_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char line[1024];
	int n;
	if (level == LIBBPF_DEBUG && !dk_log_verbose)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, ap);
	if (n <= 0)
		return 0;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (dk_log_len + n >= DK_LOG_SIZE) { /* keep the newest half */
		size_t keep = DK_LOG_SIZE / 2;
		if (dk_log_len > keep) {
			memmove(dk_log_buf, dk_log_buf + dk_log_len - keep, keep);
			dk_log_len = keep;
		}
		if (dk_log_len + n >= DK_LOG_SIZE)
			dk_log_len = 0;
	}
	memcpy(dk_log_buf + dk_log_len, line, n);
	dk_log_len += n;
	dk_log_buf[dk_log_len] = 0;
	return 0;
}

static void dk_log_install(int verbose)
{
	dk_log_verbose = verbose;
	libbpf_set_print(dk_libbpf_print);
}

static void dk_log_clear(void) { dk_log_len = 0; dk_log_buf[0] = 0; }
static const char *dk_log_text(void) { return dk_log_buf; }
#endif
