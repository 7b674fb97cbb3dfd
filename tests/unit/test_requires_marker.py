"""The ``requires`` rule of tests/conftest.py: a missing feature skips,
except under DKEBPF_REQUIRE_BPF=1 or on a kernel at least the feature's
minimum, where it fails. Driven with a planted probe, so each branch runs
here whatever this host has."""
import pytest

import conftest
from dkebpf import features


@pytest.fixture
def planted(monkeypatch):
    """A feature 'planted' that is missing since kernel 6.3; BPF itself
    counts as available; the running kernel is whatever the test sets."""
    monkeypatch.setattr(conftest, "bpf_unavailable_reason", lambda: None)
    monkeypatch.setitem(features.FEATURES, "planted",
                        features.Feature("planted", "a planted feature", (6, 3), lambda: "not here"))
    features.missing.cache_clear()
    yield monkeypatch
    features.missing.cache_clear()


def running(monkeypatch, version, require_bpf):
    monkeypatch.setattr(features, "kernel_version", lambda release=None: version)
    monkeypatch.setattr(conftest, "REQUIRE_BPF", require_bpf)


def test_missing_on_an_older_kernel_skips(planted):
    running(planted, (6, 1), False)
    with pytest.raises(pytest.skip.Exception, match="planted: not here"):
        conftest.require_features("planted")


def test_missing_under_require_bpf_fails(planted):
    running(planted, (6, 1), True)
    with pytest.raises(pytest.fail.Exception, match="DKEBPF_REQUIRE_BPF=1 but planted: not here"):
        conftest.require_features("planted")


def test_missing_on_a_kernel_that_has_it_fails(planted):
    running(planted, (6, 3), False)
    with pytest.raises(pytest.fail.Exception, match="at least 6.3"):
        conftest.require_features("planted")


def test_present_runs(planted):
    planted.setitem(features.FEATURES, "planted",
                    features.Feature("planted", "a planted feature", (6, 3), lambda: None))
    running(planted, (6, 1), True)
    conftest.require_features("planted")  # neither skips nor fails


def test_an_unknown_probe_name_is_a_test_bug(planted):
    with pytest.raises(LookupError, match="no feature probe 'nope'"):
        conftest.require_features("nope")
