"""The deployment files, validated offline: every Kubernetes manifest of the kustomize base and of the
example overlay (rendered here, as `kustomize build` would for the features they use) against the
Kubernetes schemas, strictly; the compose file against the compose specification; and the references
between manifests (selectors, claims, secret keys, the autoscaler's target).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}  # KEDA's: their schema is not Kubernetes'
CLUSTER_KINDS = {"Namespace"}
Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[Manifest]:
    """A kustomization's resources with its namespace, labels, images, replicas and JSON patches applied:
    the subset of kustomize that the base and the example overlay use (anything else is refused)."""
    spec = load_documents(folder / "kustomization.yaml")[0]
    unknown = set(spec) - {"apiVersion", "kind", "namespace", "labels", "resources", "images", "replicas", "patches"}
    assert not unknown, f"{folder}: kustomize features this test does not render: {unknown}"
    docs: list[Manifest] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        docs += render(path) if path.is_dir() else load_documents(path)
    docs = copy.deepcopy(docs)
    for doc in docs:
        _apply(spec, doc)
    for patch in spec.get("patches", []):
        targets = [d for d in docs if d["kind"] == patch["target"]["kind"] and _name(d) == patch["target"]["name"]]
        assert targets, f"patch target not found: {patch['target']}"
        for doc in targets:
            doc.update(jsonpatch.apply_patch(doc, yaml.safe_load(patch["patch"])))
    return docs


def _apply(spec: Manifest, doc: Manifest) -> None:
    meta = doc["metadata"]
    if "namespace" in spec:
        if doc["kind"] == "Namespace":
            meta["name"] = spec["namespace"]  # kustomize renames a Namespace object too
        else:
            meta["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        meta.setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for container in _containers(doc):
            if container["image"].rsplit(":", 1)[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for replicas in spec.get("replicas", []):
        if doc["kind"] in ("Deployment", "StatefulSet") and _name(doc) == replicas["name"]:
            doc["spec"]["replicas"] = replicas["count"]


def _name(doc: Manifest) -> str:
    return str(doc["metadata"]["name"])


def _pod_spec(doc: Manifest) -> Manifest | None:
    template = doc.get("spec", {}).get("template")
    return template["spec"] if template else None


def _containers(doc: Manifest) -> Iterator[Manifest]:
    pod = _pod_spec(doc)
    if pod:
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


BASE = render(K8S / "base")
OVERLAY = render(K8S / "overlays" / "example")


@pytest.mark.parametrize("docs", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_manifest_is_valid_kubernetes(docs: list[Manifest]) -> None:
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_base_holds_what_a_cluster_needs() -> None:
    kinds = {(d["kind"], _name(d)) for d in BASE}
    assert {("Namespace", "catsdogs"), ("Job", "catsdogs-migrate"), ("Deployment", "catsdogs-api"),
            ("Service", "catsdogs-api"), ("Deployment", "catsdogs-sweeper"), ("Deployment", "catsdogs-worker"),
            ("PodDisruptionBudget", "catsdogs-worker"), ("Deployment", "catsdogs-flower"), ("Job", "catsdogs-train"),
            ("Service", "catsdogs-train"), ("ScaledObject", "catsdogs-worker"),
            ("NetworkPolicy", "postgres-clients"), ("NetworkPolicy", "redis-clients")} <= kinds  # fmt: skip
    assert not any(d["kind"] == "Secret" for d in BASE)  # created by hand, never from a file in git
    by_name = {(d["kind"], _name(d)): d for d in BASE}
    api = by_name["Deployment", "catsdogs-api"]
    assert api["spec"]["replicas"] >= 2 and "initContainers" not in _pod_spec(api)  # type: ignore[operator]
    probes = next(_containers(api))
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert by_name["Deployment", "catsdogs-sweeper"]["spec"]["replicas"] == 1
    worker = by_name["Deployment", "catsdogs-worker"]
    container = next(_containers(worker))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and "livenessProbe" in container
    assert _pod_spec(worker)["terminationGracePeriodSeconds"] >= 30  # type: ignore[index]
    train = by_name["Job", "catsdogs-train"]["spec"]
    assert train["completionMode"] == "Indexed" and train["completions"] == train["parallelism"]
    assert "--num-nodes" in next(_containers(by_name["Job", "catsdogs-train"]))["command"]


def test_workers_and_migrations_mount_the_model_store_as_they_need_it() -> None:
    for doc in BASE:
        for container in _containers(doc):
            models = [m for m in container.get("volumeMounts", []) if m["name"] == "models"]
            writes = _name(doc) in ("catsdogs-migrate", "catsdogs-train")
            assert all(m.get("readOnly", False) is not writes for m in models), (_name(doc), models)
            photos = [m for m in container.get("volumeMounts", []) if m["name"] == "photos"]
            assert all(m.get("readOnly") for m in photos), _name(doc)


def test_references_between_manifests_hold() -> None:
    secret_keys = set(load_documents(K8S / "base" / "secret.example.yaml")[0]["stringData"])
    claims = {_name(d) for d in BASE if d["kind"] == "PersistentVolumeClaim"}
    pod_labels = [(d, _pod_spec_labels(d)) for d in BASE if _pod_spec(d)]
    for doc in BASE:
        for container in _containers(doc):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or (ref["name"] == "catsdogs-secrets" and ref["key"] in secret_keys), env
        for volume in (_pod_spec(doc) or {}).get("volumes", []):
            claim = volume.get("persistentVolumeClaim")
            assert claim is None or claim["claimName"] in claims, volume
        selector = doc.get("spec", {}).get("selector")
        if doc["kind"] == "Service" and selector:
            assert any(selector.items() <= labels.items() for _, labels in pod_labels), _name(doc)
    scaled = next(d for d in BASE if d["kind"] == "ScaledObject")
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in {(d["kind"], _name(d)) for d in BASE}
    auth = next(d for d in BASE if d["kind"] == "TriggerAuthentication")
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= secret_keys
    assert scaled["spec"]["triggers"][0]["authenticationRef"]["name"] == _name(auth)
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["cooldownPeriod"] > 0


def _pod_spec_labels(doc: Manifest) -> dict[str, str]:
    labels = dict(doc["spec"]["template"]["metadata"].get("labels", {}))
    if doc["kind"] == "Job":
        labels["batch.kubernetes.io/job-name"] = _name(doc)  # set by the Job controller
    return labels


def test_the_overlay_changes_what_it_says() -> None:
    assert {d["metadata"].get("namespace") for d in OVERLAY if d["kind"] not in CLUSTER_KINDS} == {"catsdogs-prod"}
    assert [_name(d) for d in OVERLAY if d["kind"] == "Namespace"] == ["catsdogs-prod"]
    images = {c["image"] for d in OVERLAY for c in _containers(d) if "catsdogs" in c["image"]}
    assert images == {"registry.example.com/team/catsdogs:0.1.0"}
    assert next(d for d in OVERLAY if _name(d) == "catsdogs-api" and d["kind"] == "Deployment")["spec"]["replicas"] == 3
    assert next(d for d in OVERLAY if d["kind"] == "ScaledObject")["spec"]["maxReplicaCount"] == 32


def test_the_compose_file_follows_the_compose_specification() -> None:
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
             str(ROOT / "docker-compose.yml")]  # fmt: skip
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
