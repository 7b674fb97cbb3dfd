"""Reading httpflow points in e2e tests: the points of one server port,
request counts and byte sums per direction, waiting until both ends report."""
from collections import Counter

from support import traffic


def http_points(receiver, port):
    return [p for p in receiver.points(measurement="httpflow") if p.tags.get("server_port") == str(port)]


def counts(points, direction):
    """(method, path, status) -> requests, on one side (outgoing = clients)."""
    c = Counter()
    for p in points:
        if p.tags["direction"] == direction:
            c[(p.fields["method"], p.fields["path"], p.fields["status_code"])] += p.fields["count"]
    return c


def sums(points, direction, field):
    c = Counter()
    for p in points:
        if p.tags["direction"] == direction:
            c[(p.fields["path"], p.fields["status_code"])] += p.fields[field]
    return c


def wait_counts(receiver, port, want, timeout=40):
    """The points of port once both ends report exactly `want` (or what there is at the timeout)."""
    def done():
        pts = http_points(receiver, port)
        return pts if counts(pts, "outgoing") == want and counts(pts, "incoming") == want else None
    return traffic.wait_until(done, timeout) or http_points(receiver, port)
