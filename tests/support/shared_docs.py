"""The project's shared reference and spec files (``shared/`` beside the
repository), which some tests compare the repository against. Outside CI a
checkout without them skips those tests; in CI (``CI=true``) a missing file
fails them, since there a skip would hide a broken comparison."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_CANDIDATES = [Path("/work/shared"), REPO.parent / "shared"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_shared(rel):
    """The path of shared/<rel>, or None."""
    for base in SHARED_CANDIDATES:
        p = base / rel
        if p.exists():
            return p
    return None


def shared_or_skip(rel):
    """The path of shared/<rel>; skips the test when it is absent, fails
    instead in CI."""
    p = find_shared(rel)
    if p is None:
        where = " or ".join(str(b / rel) for b in SHARED_CANDIDATES)
        if IN_CI:
            pytest.fail(f"CI: shared file {rel} not found ({where})")
        pytest.skip(f"shared file {rel} not found ({where})")
    return p
