"""The few Kubernetes API calls the enrichment needs, over ``requests``:
a paged list and a watch stream, authenticated with a bearer token and
with the server's certificate verified against the cluster's CA.

Facts relied on (Kubernetes API concepts, "Efficient detection of
changes" and "Retrieving large results sets in chunks"):
- a list returns ``metadata.resourceVersion``; a watch from it sends every
  later change as one JSON object per line ``{"type", "object"}``, type
  ADDED, MODIFIED, DELETED, BOOKMARK (with ``allowWatchBookmarks=true``:
  only ``metadata.resourceVersion`` is meaningful) or ERROR (object is a
  ``Status``; code 410 when the version is too old);
- the server ends a watch after ``timeoutSeconds``; it is resumed from the
  last version seen, so nothing is lost between two watches;
- a list is paged with ``limit`` and ``continue``; an expired continue
  token answers 410 too;
- a token mounted from a projected service-account volume is rotated in
  place (the kubelet swaps the file), so it is read again when it changes."""
import json
import os
import threading

import requests

from ...errors import DkebpfError

LIST_PAGE = 500
WATCH_TIMEOUT_S = 300        # the server ends the watch; we resume from the last version
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30  # bookmarks and the server's own timeout come earlier


class ApiError(DkebpfError):
    """An answer from the API server that is not what was asked for, or no
    answer. ``status`` is the HTTP status (0 when the server was not
    reached)."""

    def __init__(self, message, status=0):
        super().__init__(message)
        self.status = status


class Gone(ApiError):
    """410: the resource version asked for is no longer kept; list again."""

    def __init__(self, message):
        super().__init__(message, 410)


class Token:
    """The bearer token: a fixed string, or a file read again whenever its
    inode, size or mtime change."""

    def __init__(self, path="", string=""):
        self.path = path
        self.string = string.strip()
        self._stamp = None
        self._value = ""

    def value(self):
        if self.string or not self.path:
            return self.string
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ApiError(f"cannot read the Kubernetes token file {self.path}: {exc.strerror}") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            with open(self.path) as f:
                self._value = f.read().strip()
            self._stamp = stamp
        return self._value


class KubeApi:
    def __init__(self, url, token, ca_path="", verify=True):
        self.url = url.rstrip("/")
        self.token = token
        self._local = threading.local()  # a Session per reflector thread: Sessions are not thread-safe
        # requests verifies against its bundle with True, against a file with its path
        self.verify = (ca_path or True) if verify else False
        if verify and ca_path and not os.path.exists(ca_path):
            raise ApiError(f"the Kubernetes CA file {ca_path} does not exist; set kubernetes_ca "
                           "(--k8s-ca) or, to skip verification, kubernetes_insecure_skip_verify")
        if not verify:
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def _get(self, path, params, stream=False):
        headers = {"Accept": "application/json"}
        tok = self.token.value()
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            r = session.get(self.url + path, params=params, headers=headers, verify=self.verify,
                                 stream=stream, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except requests.exceptions.SSLError as exc:
            raise ApiError(f"TLS with {self.url} failed: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise ApiError(f"{self.url} not reachable: {_reason(exc)}") from None
        if r.status_code != 200:
            msg = _status_message(r)
            r.close()
            if r.status_code == 410:
                raise Gone(f"GET {path}: {msg}")
            raise ApiError(f"GET {path}: HTTP {r.status_code}: {msg}", r.status_code)
        return r

    def list(self, path, params=None):
        """The items, a page at a time (a cluster's pods at once would be
        gigabytes of parsed JSON); the list's resourceVersion is in the
        returned object's ``resource_version`` once every page is read."""
        return ListPages(self, path, params)

    def watch(self, path, resource_version, params=None):
        """Changes after ``resource_version`` as (type, object), until the
        server ends the stream. Raises Gone when the version is too old."""
        params = dict(params or {}, watch="true", allowWatchBookmarks="true",
                      resourceVersion=resource_version, timeoutSeconds=WATCH_TIMEOUT_S)
        r = self._get(path, params, stream=True)
        with r:
            try:
                for line in r.iter_lines():
                    if not line:
                        continue
                    try:
                        ev = json.loads(line)
                        typ, obj = ev["type"], ev["object"]
                    except (ValueError, KeyError, TypeError):
                        raise ApiError(f"watch {path}: a line that is not a watch event") from None
                    if typ == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(f"watch {path}: {obj.get('message', 'gone')}")
                        raise ApiError(f"watch {path}: {obj.get('message', obj)}", obj.get("code", 0))
                    yield typ, obj
            except requests.exceptions.RequestException as exc:
                raise ApiError(f"watch {path} broke off: {_reason(exc)}") from None


class ListPages:
    def __init__(self, api, path, params):
        self.api, self.path = api, path
        self.params = dict(params or {}, limit=LIST_PAGE)
        self.resource_version = None

    def __iter__(self):
        params = dict(self.params)
        while True:
            r = self.api._get(self.path, params)
            try:
                body = r.json()
            except ValueError:
                raise ApiError(f"GET {self.path}: the answer is not JSON") from None
            yield body.get("items") or []
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                self.resource_version = meta.get("resourceVersion", "")
                return
            params["continue"] = meta["continue"]


def _status_message(r):
    try:
        return r.json().get("message") or r.reason
    except ValueError:
        return r.reason or "no message"


def _reason(exc):
    """The cause of a requests error without urllib3's wrapping: requests'
    error holds urllib3's MaxRetryError, whose ``reason`` is the real one,
    written "HTTPSConnection(host=..., port=...): <what happened>"."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    inner = getattr(inner, "reason", None) or inner
    text = str(inner).split("): ", 1)[-1]
    return text if len(text) < 300 else text[:297] + "..."
