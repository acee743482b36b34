"""The real `kubectl` behind ClusterApi, where no API server can run here: the ways it cannot reach a cluster."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from byoc.cluster_api import ClusterUnreachable, Kubectl

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def test_no_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnreachable, match="no kubeconfig for the cluster"):
        Kubectl.for_kubeconfig(None)
    with pytest.raises(ClusterUnreachable, match="no kubeconfig"):
        Kubectl.for_kubeconfig(str(tmp_path / "missing"))


def test_api_server_gone(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.replace("{port}", str(port)))
    cluster = Kubectl.for_kubeconfig(str(kubeconfig))
    with pytest.raises(ClusterUnreachable, match=r"The connection to the server 127.0.0.1:\d+ was refused"):
        cluster.list("services", "byoc-demo")
    with pytest.raises(ClusterUnreachable):
        cluster.delete("nodepools.karpenter.sh", "byoc-gpu")
