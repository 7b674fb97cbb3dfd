/* Records of the packet-capture data plane (ext/packets.pyx, ext/dns.pyx):
 * the one definition of their layouts; numpy dtypes are derived from these
 * structs with sizeof/offsetof (ext/packets.pyx, ext/dns.pyx). */
#ifndef DK_PACKET_H
#define DK_PACKET_H
#include <stdint.h>

#define DK_NAME_MAX 256   /* a wire-format name is at most 255 bytes (RFC 1035 3.1) */
#define DK_NO_WSCALE 0xFF /* dk_pkt.wscale without the option: no shift is over 14 */

/* One captured IP packet with its transport header decoded; the transport
 * payload was copied into the batch's payload buffer at payload_off. */
struct dk_pkt {
	uint64_t ts_ns;        /* capture time, CLOCK_REALTIME (tpacket3_hdr tp_sec/tp_nsec) */
	uint8_t saddr[16];     /* IPv4 in the first 4 bytes */
	uint8_t daddr[16];
	uint32_t payload_off;
	uint32_t payload_len;  /* bytes captured and copied */
	uint32_t payload_wire; /* bytes the transport header says there are */
	int32_t ifindex;
	uint16_t hatype;       /* ARPHRD_* of the device */
	uint16_t sport;
	uint16_t dport;
	uint8_t family;        /* 4 or 6 */
	uint8_t proto;         /* IPPROTO_TCP / IPPROTO_UDP */
	uint8_t pkttype;       /* PACKET_HOST, PACKET_OUTGOING, ... */
	uint8_t tcp_flags;
	uint32_t seq;          /* TCP: raw sequence and acknowledgment numbers */
	uint32_t ack;
	uint32_t vni;          /* VXLAN network identifier when vxlan is 1 */
	uint16_t window;       /* TCP: the window field, not scaled */
	uint16_t vlan;         /* outermost 802.1Q/802.1ad VLAN id in the frame, 0 for none */
	uint8_t vxlan;         /* 1: addresses, ports and payload are the VXLAN-inner packet's */
	uint8_t wscale;        /* TCP SYN: the window scale option's shift (RFC 7323 2.3, capped at 14),
	                        * DK_NO_WSCALE without the option or on other segments */
	uint8_t smac[6];       /* Ethernet source and destination (the inner frame's under VXLAN); */
	uint8_t dmac[6];       /* zero when the device has no Ethernet header */
};

/* One DNS message: header, first question; its A/AAAA answers (those on
 * the CNAME chain from the question) are dk_dns_addr rows. */
struct dk_dns_msg {
	uint64_t ts_ns;
	uint8_t saddr[16];
	uint8_t daddr[16];
	int32_t ifindex;
	uint32_t answers_off;  /* first dk_dns_addr row of this message */
	uint16_t answers_n;
	uint16_t hatype;
	uint16_t sport;
	uint16_t dport;
	uint16_t id;
	uint16_t qtype;
	uint16_t qname_len;    /* wire-format length, including the root label */
	uint8_t family;
	uint8_t proto;
	uint8_t pkttype;
	uint8_t qr;
	uint8_t opcode;
	uint8_t rcode;
	uint8_t qname[DK_NAME_MAX]; /* wire format, uncompressed, ASCII lower-cased */
};

struct dk_dns_addr {
	uint32_t msg;          /* row of the message in the same batch */
	uint32_t ttl;
	uint8_t family;
	uint8_t addr[16];
};

/* A finished exchange: answered (rcode >= 0) or timed out (rcode -1). */
struct dk_dns_pair {
	uint64_t ts_ns;        /* query time */
	uint64_t latency_ns;   /* 0 when timed out */
	uint8_t caddr[16];     /* client */
	uint8_t saddr[16];     /* server */
	uint16_t cport;
	uint16_t sport;
	uint16_t qtype;
	uint16_t qname_len;
	uint16_t id;           /* DNS transaction id: joins a DNATed query's two copies */
	int16_t rcode;
	uint8_t family;
	uint8_t proto;
	uint8_t qname[DK_NAME_MAX];
};
#endif
