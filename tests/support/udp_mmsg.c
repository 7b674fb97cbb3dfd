/* A UDP peer that moves its datagrams with sendmmsg/recvmmsg (several
 * datagrams per call), for the netflow tests: the peer of every datagram
 * must come out right though no per-datagram syscall describes it.
 *
 *   udp_mmsg server HOST REPLY_BYTES DATAGRAMS
 *       binds HOST:0 (unconnected), prints {"pid":..,"port":..}; receives
 *       DATAGRAMS datagrams with recvmmsg (source addresses asked for) and
 *       answers each batch with one sendmmsg of REPLY_BYTES per datagram;
 *       prints {"received":..}
 *   udp_mmsg client HOST PORT SIZE COUNT
 *       unconnected socket; one sendmmsg of COUNT datagrams of SIZE bytes to
 *       HOST:PORT, then recvmmsg until COUNT replies; prints
 *       {"sent":..,"received":..,"lport":..}
 *
 * Built by the test with cc; no library beyond libc. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 8

static int fill_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		*len = sizeof(*s4);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		*len = sizeof(*s6);
		return AF_INET6;
	}
	fprintf(stderr, "bad address %s\n", host);
	exit(2);
}

static int local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					     : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

static char buf[BATCH][65536];
static struct sockaddr_storage names[BATCH];
static struct iovec iov[BATCH];
static struct mmsghdr msgs[BATCH];

static int recv_batch(int fd, int want)
{
	if (want > BATCH)
		want = BATCH;
	for (int i = 0; i < want; i++) {
		iov[i].iov_base = buf[i];
		iov[i].iov_len = sizeof(buf[i]);
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &names[i];
		msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
	}
	int n = recvmmsg(fd, msgs, want, MSG_WAITFORONE, NULL);
	if (n < 0) {
		perror("recvmmsg");
		exit(1);
	}
	return n;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc == 5 && !strcmp(argv[1], "server")) {
		struct sockaddr_storage ss;
		socklen_t len;
		int fam = fill_addr(argv[2], 0, &ss, &len);
		int reply = atoi(argv[3]), want = atoi(argv[4]);
		int fd = socket(fam, SOCK_DGRAM, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len)) {
			perror("bind");
			return 1;
		}
		printf("{\"pid\": %d, \"port\": %d}\n", getpid(), local_port(fd));
		static char out[65536];
		memset(out, 'y', sizeof(out));
		long got = 0;
		while (want > 0) {
			int n = recv_batch(fd, want);
			for (int i = 0; i < n; i++) {
				got += msgs[i].msg_len;
				iov[i].iov_base = out;
				iov[i].iov_len = reply;
				msgs[i].msg_hdr.msg_controllen = 0;
			}
			if (sendmmsg(fd, msgs, n, 0) != n) {
				perror("sendmmsg");
				return 1;
			}
			want -= n;
		}
		printf("{\"received\": %ld}\n", got);
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "client")) {
		struct sockaddr_storage dest;
		socklen_t len;
		int fam = fill_addr(argv[2], atoi(argv[3]), &dest, &len);
		int size = atoi(argv[4]), count = atoi(argv[5]);
		if (count > BATCH) {
			fprintf(stderr, "at most %d datagrams\n", BATCH);
			return 2;
		}
		int fd = socket(fam, SOCK_DGRAM, 0);
		printf("{\"pid\": %d}\n", getpid());
		static char data[65536];
		memset(data, 'z', sizeof(data));
		for (int i = 0; i < count; i++) {
			iov[i].iov_base = data;
			iov[i].iov_len = size;
			memset(&msgs[i], 0, sizeof(msgs[i]));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &dest;
			msgs[i].msg_hdr.msg_namelen = len;
		}
		if (sendmmsg(fd, msgs, count, 0) != count) {
			perror("sendmmsg");
			return 1;
		}
		long got = 0;
		for (int left = count; left > 0;) {
			int n = recv_batch(fd, left);
			for (int i = 0; i < n; i++)
				got += msgs[i].msg_len;
			left -= n;
		}
		printf("{\"sent\": %ld, \"received\": %ld, \"lport\": %d}\n", (long)size * count, got, local_port(fd));
		return 0;
	}
	fprintf(stderr, "usage: udp_mmsg server HOST REPLY DATAGRAMS | client HOST PORT SIZE COUNT\n");
	return 2;
}
