"""The Kubernetes options: every name DataKit and the original pass, flags,
and clear errors."""
import pytest

from dkebpf.config import DEFAULT_SA_CA, DEFAULT_SA_TOKEN, load_config
from dkebpf.errors import ConfigError


def load(argv=(), env=None):
    return load_config(list(argv), env or {})


def test_in_cluster_defaults():
    c = load()
    assert c.kubernetes_url == "https://kubernetes.default:443"
    assert (c.bearer_token, c.bearer_token_string, c.kubernetes_ca) == (DEFAULT_SA_TOKEN, "", DEFAULT_SA_CA)
    assert c.kubernetes_insecure_skip_verify is False and c.node_name == ""


@pytest.mark.parametrize("env", [
    {"DKE_K8S_URL": "https://api:6443", "DKE_K8S_BEARER_TOKEN_PATH": "/t", "DKE_K8S_CA": "/ca",
     "DKE_K8S_INSECURE_SKIP_VERIFY": "true", "NODE_NAME": "n1",
     "DKE_K8S_WORKLOAD_LABELS": "app, team", "K8S_WORKLOAD_LABEL_PREFIX": "k8s_"},
    {"ENV_INPUT_EBPF_KUBERNETES_URL": "https://api:6443", "ENV_INPUT_EBPF_BEARER_TOKEN": "/t",
     "ENV_INPUT_EBPF_KUBERNETES_CA": "/ca", "ENV_INPUT_EBPF_KUBERNETES_INSECURE_SKIP_VERIFY": "true",
     "ENV_INPUT_EBPF_NODE_NAME": "n1", "ENV_INPUT_EBPF_WORKLOAD_LABELS": "app,team",
     "ENV_INPUT_EBPF_WORKLOAD_LABEL_PREFIX": "k8s_"},
])
def test_environment(env):
    c = load(env=env)
    assert (c.kubernetes_url, c.bearer_token, c.kubernetes_ca, c.node_name) == ("https://api:6443", "/t", "/ca", "n1")
    assert c.kubernetes_insecure_skip_verify is True
    assert c.workload_labels == ("app", "team") and c.workload_label_prefix == "k8s_"


def test_flags_and_token_string():
    c = load(["--k8s-url", "https://10.0.0.1", "--k8s-bearer-token", "abc", "--k8s-ca", "/ca",
              "--k8s-insecure-skip-verify", "--k8s-node-name", "n2"])
    assert c.kubernetes_url.startswith("https://10.0.0.1") and c.bearer_token_string == "abc"
    assert c.bearer_token == ""  # a token string means the file is not read
    assert c.kubernetes_insecure_skip_verify and c.node_name == "n2"


def test_a_bad_url_names_the_option():
    with pytest.raises(ConfigError) as info:
        load(env={"DKE_K8S_URL": "http://[::1"})
    assert "DKE_K8S_URL" in str(info.value) and "\n" not in str(info.value)
