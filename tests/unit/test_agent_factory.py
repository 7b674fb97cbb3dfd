"""A plugin whose class cannot be imported (a broken install) fails alone,
at its start, with its own error."""
import pytest

from dkebpf import agent
from dkebpf.errors import BuildError
from dkebpf.plugins import PLUGIN, PluginRow


class _BrokenRow(PluginRow):
    def plugin_class(self):
        raise BuildError("dkebpf's compiled extensions are missing (no _netflow); reinstall with pip")


def test_a_plugin_that_cannot_be_imported_raises_its_own_error_at_start():
    name, factory = agent._factory(_BrokenRow("ebpf-net", PLUGIN, "netflow", "netflow:NetflowPlugin"), ctx=None)
    assert name == "ebpf-net netflow"
    with pytest.raises(BuildError, match="compiled extensions are missing"):
        factory()
