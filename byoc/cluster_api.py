"""The deployment's Kubernetes cluster, as byoc's lifecycle needs it: list and delete objects, and run a command in
a pod's container (`byoc keys|usage -f` reach the private store through a gateway pod).

`ClusterApi` is the interface; `Kubectl` implements it with the `kubectl` CLI and the kubeconfig `byoc up` saved
(which authenticates with `aws eks get-token`, so the caller's cloud credentials apply). Kinds are kubectl's
resource names: services, persistentvolumeclaims, nodes, pods, events, deployments.apps, nodepools.karpenter.sh,
nodeclaims.karpenter.sh, scaledobjects.keda.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

# kubectl's own report of a command that ran in the container and exited non-zero: kubectl then exits with the
# command's status (k8s.io/kubectl/pkg/cmd/util/helpers.go, CheckErr on a utilexec.ExitError, kubectl v1.30).
_REMOTE_EXIT = re.compile(r"command terminated with exit code (\d+)")


class ClusterUnreachable(Exception):
    """The cluster's API could not be asked (no kubectl, no kubeconfig, server gone, access denied)."""


class ClusterApi(Protocol):
    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind (in a namespace, or cluster-wide / all namespaces when None)."""
        ...

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Ask for deletion and return at once (finalizers run in the cluster; callers poll `list`).
        An object that is already gone is not an error."""
        ...


class Kubectl:
    """ClusterApi through `kubectl --kubeconfig PATH`."""

    def __init__(self, kubeconfig: Path, kubectl: str = "kubectl", timeout_s: float = 60.0) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl = kubectl
        self.timeout_s = timeout_s

    @classmethod
    def for_kubeconfig(cls, kubeconfig: str | None) -> Kubectl:
        """Raises ClusterUnreachable when kubectl or the kubeconfig is missing."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ClusterUnreachable("kubectl is not installed")
        if not kubeconfig or not Path(kubeconfig).is_file():
            raise ClusterUnreachable("no kubeconfig for the cluster (the stack has no cluster yet, or it was removed)")
        return cls(Path(kubeconfig), kubectl)

    def _run(self, *args: str) -> str:
        command = [self.kubectl, "--kubeconfig", str(self.kubeconfig), "--request-timeout", "20s", *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterUnreachable(f"kubectl {args[0]}: {exc}") from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise ClusterUnreachable(f"kubectl {' '.join(args[:2])}: {message[-1] if message else done.returncode}")
        return done.stdout

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        where = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        text = self._run("get", kind, *where, "--output", "json", "--ignore-not-found")
        if not text.strip():
            return []
        items: list[dict[str, Any]] = json.loads(text).get("items", [])
        return items

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        where = ["--namespace", namespace] if namespace else []
        self._run("delete", kind, name, *where, "--ignore-not-found", "--wait=false")

    def exec(
        self, namespace: str, pod: str, container: str, args: Sequence[str], timeout_s: float = 120.0
    ) -> tuple[int, str]:
        """`kubectl exec --namespace NS POD --container C -- ARGS`: the command's exit status and stdout (its stderr
        is dropped: stdout is the data). Raises ClusterUnreachable with kubectl's message when the command could not
        run (pod gone, exec forbidden, no such program). No --request-timeout: it would cut the stream itself."""
        command = [self.kubectl, "--kubeconfig", str(self.kubeconfig), "exec", "--namespace", namespace, pod]
        command += ["--container", container, "--", *args]
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterUnreachable(f"kubectl exec: {exc}") from None
        if done.returncode != 0 and not _REMOTE_EXIT.search(done.stderr):
            # stderr only: stdout may hold what the command printed (a key), never to be repeated in a message
            message = done.stderr.strip().splitlines()
            raise ClusterUnreachable(f"kubectl exec {pod}: {message[-1] if message else done.returncode}")
        return done.returncode, done.stdout
