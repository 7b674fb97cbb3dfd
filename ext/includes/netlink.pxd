# Declarations of the kernel's netlink and ctnetlink UAPI headers (socket
# calls: sysio.pxd).

cdef extern from "<linux/netlink.h>" nogil:
    struct sockaddr_nl:
        unsigned short nl_family
        unsigned int nl_pid
        unsigned int nl_groups
    struct nlmsghdr:
        unsigned int nlmsg_len
        unsigned short nlmsg_type
        unsigned short nlmsg_flags
        unsigned int nlmsg_seq
        unsigned int nlmsg_pid
    struct nlattr:
        unsigned short nla_len
        unsigned short nla_type
    enum:
        NLMSG_NOOP
        NLMSG_ERROR
        NLMSG_DONE
        NLMSG_OVERRUN
        NLMSG_MIN_TYPE
        NLM_F_MULTI
        NLM_F_CREATE
        NLA_TYPE_MASK

cdef extern from "<linux/netfilter/nfnetlink.h>" nogil:
    struct nfgenmsg:
        unsigned char nfgen_family
        unsigned char version
        unsigned short res_id
    enum:
        NFNL_SUBSYS_CTNETLINK

cdef extern from "<linux/netfilter/nfnetlink_conntrack.h>" nogil:
    enum:
        IPCTNL_MSG_CT_NEW
        IPCTNL_MSG_CT_DELETE
        CTA_TUPLE_ORIG
        CTA_TUPLE_REPLY
        CTA_STATUS
        CTA_ID
        CTA_TUPLE_IP
        CTA_TUPLE_PROTO
        CTA_IP_V4_SRC
        CTA_IP_V4_DST
        CTA_IP_V6_SRC
        CTA_IP_V6_DST
        CTA_PROTO_NUM
        CTA_PROTO_SRC_PORT
        CTA_PROTO_DST_PORT
