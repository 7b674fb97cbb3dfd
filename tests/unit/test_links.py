"""rtnetlink link messages -> {ifindex: flags or None}."""
from dkebpf import links


def msg(mtype, index=0, flags=0, payload=None):
    body = links.IFINFO.pack(0, 1, index, flags, 0) if payload is None else payload
    return links.NLMSG.pack(links.NLMSG.size + len(body), mtype, 0, 1, 0) + body


def test_new_and_deleted_links_and_the_dumps_end():
    out = {}
    buf = msg(links.RTM_NEWLINK, 2, 0x1003) + msg(links.RTM_NEWLINK, 1, links.IFF_LOOPBACK | 1) + \
        msg(links.RTM_DELLINK, 7) + msg(links.NLMSG_DONE, payload=b"\0\0\0\0")
    assert links.parse(buf, out) is True
    assert out == {2: 0x1003, 1: links.IFF_LOOPBACK | 1, 7: None}


def test_a_truncated_message_ends_the_walk():
    out = {}
    buf = msg(links.RTM_NEWLINK, 3, 1)
    assert links.parse(buf + buf[:10], out) is False and out == {3: 1}


def test_the_live_namespace_has_loopback():
    assert any(flags & links.IFF_LOOPBACK for flags in links.dump().values())
