"""KEY=VALUE items of the command line, one parser for every flag taking
them: `dkebpf bench --levels KIND=RATE,... --peak KIND=RATE,...`, `dkebpf
netlog-filter --match FIELD=VALUE`. (The collector's own `--tags k=v`
follows DataKit's rules instead, see config.p_tags: it drops bad items with
a warning rather than stopping.)"""
from typing import Dict, Iterable

from .errors import ConfigError


def parse_pairs(items: Iterable[str], flag: str, keys: Iterable[str], form: str = "KEY=VALUE",
                quote_whole: str = "") -> Dict[str, str]:
    """{key: value} of items "key=value" (spaces around the key dropped, the
    value as written); each key one of ``keys`` and given once. A bad item is
    a ConfigError naming the flag, the item (or ``quote_whole``, the flag's
    whole text when the items were cut from it) and what is expected:
    ``form`` with the keys allowed."""
    allowed = list(keys)
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        shown = quote_whole or item
        if not sep or key not in allowed:
            raise ConfigError(f'invalid {flag} "{shown}": write {form} with {form.split("=")[0]} one of '
                              f'{", ".join(allowed)} (got "{item}")')
        if key in out:
            raise ConfigError(f'invalid {flag} "{shown}": {key} given twice')
        out[key] = value
    return out
