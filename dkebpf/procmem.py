"""A process's memory as /proc/<pid>/smaps and /proc/<pid>/status give it,
read in one place: the `/metrics` memory figures (debug_server), the
release of library pages after each flush (agent) and perf/bench_memory.py
all use these readers."""

SIZE_FIELDS = ("Rss", "Anonymous")  # kB fields kept, as bytes


def mappings(path="/proc/self/smaps"):
    """[(start, end, perms, path, {"Rss": bytes, "Anonymous": bytes})] of an
    smaps file (/proc/<pid>/smaps), one per mapping in address order; path
    "" for an anonymous mapping. Raises OSError when the file cannot be
    read (the process gone)."""
    out = []
    with open(path) as f:
        for line in f:
            first, _, rest = line.partition(" ")
            if not first.endswith(":"):  # "start-end perms offset dev inode [path]"
                parts = line.split(None, 5)
                start, end = (int(x, 16) for x in first.split("-"))
                out.append((start, end, parts[1], parts[5].strip() if len(parts) > 5 else "", {}))
            elif out and first[:-1] in SIZE_FIELDS:
                out[-1][4][first[:-1]] = int(rest.split()[0]) * 1024
    return out


def status_sizes(text, keys=("VmRSS", "VmHWM", "RssAnon", "RssFile")):
    """{key: bytes} of the kB lines named by keys in the text of
    /proc/<pid>/status."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            out[key] = int(rest.split()[0]) * 1024
    return out
