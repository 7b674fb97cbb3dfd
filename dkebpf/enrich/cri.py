"""A small client of the Kubernetes Container Runtime Interface (CRI), the
gRPC service containerd's CRI plugin and CRI-O answer on their unix socket,
for ``--container-endpoints`` (enrich/containers.py turns its answers into
container names). No gRPC library: gRPC is HTTP/2 (RFC 9113) with
length-prefixed protobuf messages, and a unary call needs little of it:

- the client preface and a SETTINGS frame (no push, a receive window as
  large as MAX_REPLY), SETTINGS and PING acknowledged; frames written and
  their headers read by dkebpf._http2 (the HTTP/2 tracer's frame parser,
  ext/includes/h2frame.pxd);
- per call one HEADERS frame, its fields HPACK literals without indexing
  (RFC 7541 6.2.2: no table state on our side), and one DATA frame with the
  5-byte gRPC prefix; the reply's HEADERS (decoded with dkebpf._hpack, the
  decoder of the HTTP/2 tracer), DATA and trailers, ``grpc-status``;
- protobuf (https://protobuf.dev/programming-guides/encoding/) encoded and
  decoded by hand for the fields read, numbers from kubernetes/cri-api
  pkg/apis/runtime/v1/api.proto (the same in v1alpha2 for these):

  ListPodSandboxRequest   filter=1 PodSandboxFilter{state=2 {state=1}}
  ListPodSandboxResponse  items=1 PodSandbox{id=1, metadata=2
                          {name=1, uid=2, namespace=3}, state=3, created_at=4}
  ListContainersRequest   filter=1 ContainerFilter{state=2 {state=1}}
  ListContainersResponse  containers=1 Container{id=1, pod_sandbox_id=2,
                          metadata=3 {name=1}, state=6, created_at=7}
  ContainerStatusRequest  container_id=1, verbose=2
  PodSandboxStatusRequest pod_sandbox_id=1, verbose=2
  *StatusResponse         info=2 map<string,string>: "info" is JSON whose
                          "pid" is the process on the host (containerd,
                          CRI-O)
  VersionResponse         version=1, runtime_name=2, runtime_version=3,
                          runtime_api_version=4

``runtime.v1`` first, ``runtime.v1alpha2`` when a runtime says UNIMPLEMENTED
(containerd before 1.5 speaks only that). Every read is bounded (frame size,
reply size, one deadline per call); anything else than the expected reply
is a CriError with one line saying what."""
import json
import socket
import time
from urllib.parse import unquote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
MAX_FRAME = 16384           # SETTINGS_MAX_FRAME_SIZE's initial value, which we keep
MAX_REPLY = 16 << 20        # bytes of one reply's header blocks and messages
DEFAULT_WINDOW = 65535
APIS = ("runtime.v1", "runtime.v1alpha2")
NOT_FOUND, UNIMPLEMENTED = 5, 12    # gRPC status codes
SANDBOX_READY, CONTAINER_RUNNING = 0, 1


class CriError(Exception):
    """A call that got no proper answer, with the reason. other_protocol:
    the socket answered, but not with HTTP/2 (an HTTP/1 server, say)."""

    def __init__(self, message, other_protocol=False, status=None):
        super().__init__(message)
        self.other_protocol = other_protocol
        self.status = status


# --- protobuf ------------------------------------------------------------

def _varint(n):
    n &= (1 << 64) - 1            # negative int64: ten bytes of two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def pb_int(no, value):
    """Field `no` as a varint (int32/64, uint, bool, enum); 0 is left out (proto3)."""
    return _varint(no << 3) + _varint(int(value)) if value else b""


def pb_bytes(no, value):
    """Field `no` length-delimited: a string, bytes or an encoded message.
    An empty one is written (a message field present but empty is not
    the same as absent: a filter on state 0)."""
    value = value.encode() if isinstance(value, str) else bytes(value)
    return _varint(no << 3 | 2) + _varint(len(value)) + value


def pb_map(no, mapping):
    """A map<string,string> field: one entry message {key=1, value=2} each."""
    return b"".join(pb_bytes(no, pb_bytes(1, k) + pb_bytes(2, v)) for k, v in mapping.items())


def _read_varint(buf, i):
    n = shift = 0
    while True:
        if i >= len(buf):
            raise CriError("malformed protobuf: a varint cut short")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift >= 70:
            raise CriError("malformed protobuf: a varint of more than 10 bytes")


def pb_fields(buf):
    """[(field number, value)]: an int for varints, bytes for
    length-delimited fields; fixed32/64 fields are skipped (none is read)."""
    out = []
    i, n = 0, len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        no, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            size, i = _read_varint(buf, i)
            if size > n - i:
                raise CriError(f"malformed protobuf: field {no} of {size} bytes, {n - i} left")
            value = bytes(buf[i:i + size])
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > n:
                raise CriError(f"malformed protobuf: fixed field {no} cut short")
            continue
        else:
            raise CriError(f"malformed protobuf: wire type {wire} of field {no}")
        out.append((no, value))
    return out


def _text(value, what):
    if not isinstance(value, bytes):
        raise CriError(f"malformed reply: {what} is not a string")
    return value.decode("utf-8", "replace")


def _number(value, what):
    if not isinstance(value, int):
        raise CriError(f"malformed reply: {what} is not a number")
    return value - (1 << 64) if value >= 1 << 63 else value


def _message(value, what):
    if not isinstance(value, bytes):
        raise CriError(f"malformed reply: {what} is not a message")
    return pb_fields(value)


def _string_map(fields, no, what):
    out = {}
    for n, entry in fields:
        if n == no:
            kv = dict(_message(entry, what))
            out[_text(kv.get(1, b""), what)] = _text(kv.get(2, b""), what)
    return out


def _metadata(value, what):
    """(name, namespace) of a PodSandboxMetadata (name=1, namespace=3) or a
    ContainerMetadata (name=1)."""
    f = dict(_message(value, what))
    return _text(f.get(1, b""), what + " name"), _text(f.get(3, b""), what + " namespace")


# --- HTTP/2 --------------------------------------------------------------

def _hpack_int(value, prefix_bits, first=0):
    """RFC 7541 5.1: an integer with an N-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """One header field as a literal without indexing, new name, no
    Huffman coding (RFC 7541 6.2.2): 0x00, name, value."""
    name, value = name.encode(), value.encode()
    return b"\0" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _unpad(flags, payload, kind):
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise CriError("malformed HTTP/2: padding longer than its frame")
        payload = payload[1:len(payload) - payload[0]]
    if kind == HEADERS and flags & PRIORITY_FLAG:
        payload = payload[5:]
    return payload


class CriClient:
    """One connection to a CRI socket; `with CriClient(path) as c:` then
    calls on it, one after the other (streams 1, 3, 5...)."""

    def __init__(self, path, timeout):
        from .._hpack import HpackDecoder   # the compiled HPACK decoder of the HTTP/2 tracer
        from .._http2 import frame, frame_header   # and its frame writer and frame header parser
        self._frame, self._frame_header = frame, frame_header
        self.path = path
        self.timeout = timeout
        self.api = APIS[0]
        self._decoder = HpackDecoder()
        self._sock = None
        self._buf = bytearray()
        self._stream = 1
        self._settled = False           # the server's first frame seen (a SETTINGS: it is HTTP/2)

    def __enter__(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as exc:
            s.close()
            raise CriError(_os_error(exc)) from None
        self._sock = s
        settings = (SETTINGS_ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big") +
                    SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + MAX_REPLY.to_bytes(4, "big"))
        try:
            self._send(PREFACE + self._frame(SETTINGS, 0, 0, settings) +
                       self._frame(WINDOW_UPDATE, 0, 0, (MAX_REPLY - DEFAULT_WINDOW).to_bytes(4, "big")))
        except CriError:
            s.close()
            raise
        return self

    def __exit__(self, *exc):
        self._sock.close()

    def _read(self, n, deadline):
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CriError(f"no answer in {self.timeout:g} s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise CriError(f"no answer in {self.timeout:g} s") from None
            except OSError as exc:
                raise CriError(_os_error(exc)) from None
            if not chunk:
                raise CriError("the runtime closed the connection" +
                               ("" if self._settled else " without an HTTP/2 answer (not a CRI socket?)"),
                               other_protocol=not self._settled)
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _next_frame(self, deadline):
        head = self._read(9, deadline)
        length, kind, flags, stream = self._frame_header(head)
        if not self._settled:
            if kind != SETTINGS or stream or flags & ACK or length % 6:
                raise CriError(f"not HTTP/2: the answer starts {(head + bytes(self._buf[:16]))!r}",
                               other_protocol=True)
            self._settled = True
        if length > MAX_FRAME:
            raise CriError(f"malformed HTTP/2: a frame of {length} bytes, above SETTINGS_MAX_FRAME_SIZE "
                           f"{MAX_FRAME}")
        return kind, flags, stream, self._read(length, deadline)

    def _send(self, data):
        try:
            self._sock.sendall(data)
        except OSError as exc:
            if self._settled or not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                raise CriError(_os_error(exc)) from None
            # closed on our preface before any HTTP/2 frame (an HTTP/1 server answers it with an error
            # status and closes): say what it answered
            try:
                self._sock.settimeout(0.2)
                said = self._sock.recv(32)
            except OSError:
                said = b""
            raise CriError(f"not HTTP/2: the answer starts {said!r}" if said else
                           "the runtime closed the connection without an HTTP/2 answer (not a CRI socket?)",
                           other_protocol=True) from None

    def call(self, method, request, service="RuntimeService"):
        """The reply message (bytes) of one unary call, e.g.
        call("ListPodSandbox", pb_bytes(...)); on this connection's API
        version, runtime.v1alpha2 when runtime.v1 is UNIMPLEMENTED."""
        try:
            return self._call(f"/{self.api}.{service}/{method}", request)
        except CriError as exc:
            if exc.status != UNIMPLEMENTED or self.api != APIS[0]:
                raise
        self.api = APIS[1]
        return self._call(f"/{self.api}.{service}/{method}", request)

    def _call(self, path, request):
        deadline = time.monotonic() + self.timeout
        sid = self._stream
        self._stream += 2
        fields = (hpack_literal(":method", "POST") + hpack_literal(":scheme", "http") +
                  hpack_literal(":path", path) + hpack_literal(":authority", "localhost") +
                  hpack_literal("content-type", "application/grpc") + hpack_literal("te", "trailers") +
                  hpack_literal("grpc-timeout", f"{max(1, int(self.timeout * 1000))}m"))
        message = b"\0" + len(request).to_bytes(4, "big") + request
        self._send(self._frame(HEADERS, END_HEADERS, sid, fields) + self._frame(DATA, END_STREAM, sid, message))
        blocks, block, data = [], bytearray(), bytearray()
        received = 0
        ended = False
        while not ended or block:
            kind, flags, stream, payload = self._next_frame(deadline)
            if kind == SETTINGS:
                if not flags & ACK:
                    self._send(self._frame(SETTINGS, ACK, 0))
                continue
            if kind == PING:
                if not flags & ACK:
                    self._send(self._frame(PING, ACK, 0, payload))
                continue
            if kind == GOAWAY:
                code = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else -1
                raise CriError(f"{path}: the runtime went away (GOAWAY, error code {code}"
                               f"{', ' + payload[8:200].decode('utf-8', 'replace') if len(payload) > 8 else ''})")
            if stream != sid:
                continue        # WINDOW_UPDATE, PRIORITY, frames of a stream we no longer read
            if kind == RST_STREAM:
                code = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else -1
                raise CriError(f"{path}: the runtime reset the call (RST_STREAM, error code {code})")
            if kind in (HEADERS, CONTINUATION):
                block += _unpad(flags, payload, kind)
                received += len(payload)
                if flags & END_HEADERS:
                    try:
                        raw, offsets = self._decoder.decode(bytes(block))
                    except ValueError as exc:
                        raise CriError(f"{path}: malformed header block ({exc})") from None
                    blocks.append({raw[offsets[2 * i]:offsets[2 * i + 1]].decode("latin-1"):
                                   raw[offsets[2 * i + 1]:offsets[2 * i + 2]].decode("utf-8", "replace")
                                   for i in range(len(offsets) // 2)})
                    block.clear()
            elif kind == DATA:
                if not blocks:
                    raise CriError(f"{path}: malformed reply: DATA before HEADERS")
                data += _unpad(flags, payload, kind)
                received += len(payload)
                if len(payload):   # give back what it used of the connection's window
                    self._send(self._frame(WINDOW_UPDATE, 0, 0, len(payload).to_bytes(4, "big")))
            else:
                continue
            if received > MAX_REPLY:
                raise CriError(f"{path}: a reply of more than {MAX_REPLY} bytes")
            if flags & END_STREAM:
                ended = True
        return _grpc_message(path, blocks, bytes(data))


def _grpc_message(path, blocks, data):
    head, trailers = blocks[0], blocks[-1]
    if head.get(":status") != "200":
        raise CriError(f"{path}: HTTP status {head.get(':status')} (not a gRPC server?)")
    if "grpc-status" not in trailers:
        raise CriError(f"{path}: no grpc-status in the reply")
    status = trailers["grpc-status"]
    if status != "0":
        code = int(status) if status.isdigit() else None
        raise CriError(f"{path}: gRPC status {status} {unquote(trailers.get('grpc-message', ''))[:300]}".rstrip(),
                       status=code)
    if len(data) < 5:
        raise CriError(f"{path}: a reply without its message ({len(data)} bytes)")
    if data[0]:
        raise CriError(f"{path}: a compressed reply (none was offered)")
    size = int.from_bytes(data[1:5], "big")
    if size != len(data) - 5:
        raise CriError(f"{path}: a reply message of {size} bytes in {len(data) - 5}")
    return data[5:]


def _os_error(exc):
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- the calls -----------------------------------------------------------

def version(client):
    """(runtime name, its version, the CRI version it says)."""
    f = dict(pb_fields(client.call("Version", pb_bytes(1, "v1"))))
    return tuple(_text(f.get(n, b""), "VersionResponse") for n in (2, 3, 4))


def ready_sandboxes(client):
    """{sandbox id: (pod name, pod namespace, created_at ns)} of the READY pods."""
    reply = client.call("ListPodSandbox", pb_bytes(1, pb_bytes(2, pb_int(1, SANDBOX_READY))))
    out = {}
    for no, item in pb_fields(reply):
        if no != 1:
            continue
        d = dict(_message(item, "PodSandbox"))
        if _number(d.get(3, 0), "PodSandbox state") != SANDBOX_READY:
            continue        # an older runtime that ignored the filter
        name, namespace = _metadata(d.get(2, b""), "PodSandbox metadata")
        out[_text(d.get(1, b""), "PodSandbox id")] = (name, namespace, _number(d.get(4, 0), "PodSandbox created_at"))
    return out


def running_containers(client):
    """[(container id, sandbox id, its name in the pod, created_at ns)]."""
    reply = client.call("ListContainers", pb_bytes(1, pb_bytes(2, pb_int(1, CONTAINER_RUNNING))))
    out = []
    for no, item in pb_fields(reply):
        if no != 1:
            continue
        d = dict(_message(item, "Container"))
        if _number(d.get(6, 0), "Container state") != CONTAINER_RUNNING:
            continue
        name, _ = _metadata(d.get(3, b""), "Container metadata")
        out.append((_text(d.get(1, b""), "Container id"), _text(d.get(2, b""), "Container pod_sandbox_id"),
                    name, _number(d.get(7, 0), "Container created_at")))
    return out


def pid(client, kind, ident):
    """The host pid of a container ("Container") or of a pod's sandbox
    ("PodSandbox"), from its verbose status's info["info"] JSON; 0 when it
    is gone (NOT_FOUND) or has none (not running any more)."""
    try:
        reply = client.call(f"{kind}Status", pb_bytes(1, ident) + pb_int(2, True))
    except CriError as exc:
        if exc.status == NOT_FOUND:
            return 0        # gone since it was listed
        raise
    info = _string_map(pb_fields(reply), 2, f"{kind}StatusResponse info")
    try:
        found = json.loads(info["info"]).get("pid", 0)
    except KeyError:
        raise CriError(f"{kind}Status of {ident}: no verbose info (keys {sorted(info)[:5]})") from None
    except (ValueError, AttributeError):
        raise CriError(f"{kind}Status of {ident}: its verbose info is not a JSON object") from None
    if not isinstance(found, int) or found < 0:
        raise CriError(f"{kind}Status of {ident}: pid {found!r} is not a process id")
    return found
