"""Render the Kubernetes objects a plan declares as plain YAML (for GitOps and review).

Only objects byoc itself declares: not the contents of the upstream Helm charts it installs (those releases are
listed in `manifests/helm-releases.yaml` with their pinned versions and values instead).

The files are reproducible (CI reviews them with `git diff`): one file per object, named by namespace, kind and
name (a multi-region plan: under a folder per Pulumi stack first, `manifests/<stack>/<namespace>/...`, as each
region's cluster gets its own objects, cluster-scoped ones like the GPU NodePool included, under the same names);
in each object `apiVersion`, `kind` and `metadata` first, then the other fields, and every mapping below them by
key; Helm releases by namespace and name (and stack first, with several), each with its fields in one fixed order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from byoc.plan import Plan, RecordedResource

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# Kubernetes keeps an object in etcd, whose default request limit is 1.5 MiB; a ConfigMap's data may hold 1 MiB
# (kubernetes.io/docs/concepts/configuration/configmap). byoc's rendered objects must stay under the smaller.
KUBERNETES_OBJECT_MAX_BYTES = 1 << 20


def _integral(value: Any) -> Any:
    """Pulumi sends every number as a float; Kubernetes schemas want integers where they are whole."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _by_key(value: Any) -> Any:
    """Every mapping sorted by key (lists keep their order: in Kubernetes it means something)."""
    if isinstance(value, dict):
        return {k: _by_key(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_by_key(v) for v in value]
    return value


def kubernetes_objects(plan: Plan) -> list[dict[str, Any]]:
    """byoc's own Kubernetes objects, in the order of their file names."""
    objects = [
        _as_object(resource)
        for resource in plan.resources
        if resource.type.startswith("kubernetes:") and resource.type != HELM_RELEASE
    ]
    return sorted(objects, key=_file_name)


def _as_object(resource: RecordedResource) -> dict[str, Any]:
    inputs = _integral(dict(resource.inputs))
    group_version, kind = resource.type.removeprefix("kubernetes:").rsplit(":", 1)
    group, _, version = group_version.partition("/")
    api_version = version if group == "core" else f"{group}/{version}"
    document: dict[str, Any] = {"apiVersion": inputs.pop("apiVersion", api_version), "kind": inputs.pop("kind", kind)}
    document["metadata"] = inputs.pop("metadata", {})
    document.update(inputs)
    # the order people read an object in: apiVersion, kind, metadata, then the other fields by name
    head = ("apiVersion", "kind", "metadata")
    return {k: _by_key(document[k]) for k in (*head, *sorted(set(document) - set(head)))}


def helm_releases(plan: Plan) -> list[dict[str, Any]]:
    """The Helm releases by namespace and name, their fields in a fixed order, their values sorted by key; in a
    plan of several stacks each says its stack first (every region's cluster installs its own), by stack."""
    stacks = plan.stacks()
    several = len(stacks) > 1
    releases = [
        ({"stack": release.stack} if several else {})
        | {
            key: _by_key(_integral(release.inputs.get(key)))
            for key in ("name", "namespace", "chart", "version", "repositoryOpts", "values")
            if release.inputs.get(key) is not None
        }
        for release in plan.by_type(HELM_RELEASE)
    ]
    return sorted(
        releases,
        key=lambda r: (
            stacks.index(r["stack"]) if several else 0,
            str(r.get("namespace", "")),
            str(r.get("name", "")),
        ),
    )


def _file_name(document: dict[str, Any]) -> str:
    metadata = document["metadata"]
    folder = metadata.get("namespace", "cluster")
    name = re.sub(r"[^a-z0-9.-]+", "-", f"{document['kind']}-{metadata['name']}".lower())
    return f"{folder}/{name}.yaml"


def write_manifests(plan: Plan, folder: Path) -> list[Path]:
    """One YAML file per object under folder/<namespace, or cluster for cluster-scoped objects>/; for a plan of
    several stacks, under folder/<stack>/<namespace or cluster>/ (each region's cluster holds objects of the same
    names: the GPU NodePool, the add-ons' namespaces)."""
    stacks = plan.stacks()
    if len(stacks) > 1:
        return [path for stack in stacks for path in _write_objects(plan.of_stack(stack), folder / stack)]
    return _write_objects(plan, folder)


def _write_objects(plan: Plan, folder: Path) -> list[Path]:
    written = []
    for document in kubernetes_objects(plan):
        path = folder / _file_name(document)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        written.append(path)
    return written


def write_helm_releases(plan: Plan, path: Path) -> None:
    path.write_text(
        "# Helm releases byoc installs: Helm renders their objects at deploy time; their contents are upstream's.\n"
        + yaml.safe_dump_all(helm_releases(plan), sort_keys=False)
    )


def check_object_sizes(plan: Plan, addons: int) -> None:
    """Refuse a plan whose rendered Kubernetes objects Kubernetes would not store (each of `addons` LoRA addons
    grows the gateway Deployment's arguments and the engine ConfigMap).

    Raises:
        ByocError: naming `addons` (or the spec) and the object that is too large.
    """
    from byoc.errors import ByocError

    for obj in kubernetes_objects(plan):
        size = len(json.dumps(obj))
        if size > KUBERNETES_OBJECT_MAX_BYTES:
            name = obj.get("metadata", {}).get("name", "?")
            raise ByocError(
                "addons" if addons else "spec",
                f"the rendered {obj['kind']} {name} is {size:,} bytes; Kubernetes stores at most 1 MiB in one "
                f"object ({addons:,} addons)",
                "serve fewer addons per deployment, or split them across deployments",
            )
