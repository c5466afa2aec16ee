#!/usr/bin/env python3
"""Validate rendered tsweep manifests (the output of `kubectl kustomize`).

Three layers, every failure printed as `ERROR <render>: <kind>/<name>: <path>: <message>`:

1. Kubernetes schemas: every built-in object against the OpenAPI-derived JSON schemas that
   the `kubernetes-validate` package ships for the stated Kubernetes version, in strict mode
   (unknown fields are errors, as with kubectl's default --validate=strict).
2. KEDA schemas: keda.sh objects against the JSON schemas in deploy/k8s/schemas/, derived
   from KEDA's own CRDs (vendored beside them). An object of a kind with no schema is an
   error, never a silent pass.
3. tsweep's rules, the promises the manifests make (docs/operations.md): liveness never
   depends on Redis, one Recreate coordinator, the worker's grace period covers its
   checkpoint, GPU requests match the overlay, references resolve, the autoscaler targets
   the worker, the service config files only use keys the binaries know.

Usage:
  validate_manifests.py [--kubernetes-version 1.31.0] [--expect gpu|cpu] [--repo DIR]
                        [--external-secret NAME]... RENDER.yaml [LABEL]
  validate_manifests.py --self-test RENDER.yaml   # the gpu render: breaks it and expects errors
Exit status 0 when everything passed, 1 otherwise.
"""
import argparse
import copy
import json
import os
import re
import sys
import tomllib

import jsonschema
import yaml
from kubernetes_validate import utils as kv

HERE = os.path.dirname(os.path.abspath(__file__))
KEDA_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
}
COORDINATOR = "tsweep-coordinator"
WORKER = "tsweep-worker"
READINESS_SERVICE = "tsweep.ready"
# The worker needs time after its own grace period to release leases and exit.
GRACE_MARGIN_S = 15
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def name_of(doc):
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


def pod_spec(doc):
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def containers(doc):
    return pod_spec(doc).get("containers") or []


# ---------------------------------------------------------------- schemas

def schema_errors(doc, k8s_version, schema_dir):
    """Errors of one object against its schema (layer 1 or 2)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if str(key[0]).split("/")[0] == "keda.sh":
        file_name = KEDA_SCHEMAS.get(key)
        if file_name is None:
            return [f"no KEDA schema for {key[0]} {key[1]} in {schema_dir} (vendor its CRD, see crd_to_jsonschema.py)"]
        with open(os.path.join(schema_dir, file_name), encoding="utf-8") as schema_file:
            schema = json.load(schema_file)
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    try:
        kv.validate(doc, k8s_version, strict=True)
    except kv.ValidationError as error:
        return [f"{'.'.join(str(p) for p in error.path) or '(root)'}: {error.message}"]
    except kv.SchemaNotFoundError as error:
        return [error.message]
    except kv.VersionNotSupportedError:
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {k8s_version}")
    return []


# ---------------------------------------------------------------- rust config keys

def struct_fields(path, struct):
    """Field names of `pub struct <struct> {...}` in a Rust file (None when not found)."""
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except OSError:
        return None
    match = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
    if not match:
        return None
    return set(re.findall(r"^\s*pub (\w+)\s*:", match.group(1), re.M))


def rust_config_keys(repo):
    return {
        "coordinator": struct_fields(os.path.join(repo, "coordinator/src/config.rs"), "ServiceConfig"),
        "worker": struct_fields(os.path.join(repo, "worker/src/config.rs"), "WorkerConfig"),
    }


# ---------------------------------------------------------------- tsweep rules

class Rules:
    def __init__(self, docs, expect, external_secrets, config_keys):
        self.docs = docs
        self.expect = expect
        self.external_secrets = set(external_secrets)
        self.config_keys = config_keys
        self.errors = []
        self.warnings = []
        self.by_kind = {}
        for doc in docs:
            self.by_kind.setdefault(doc.get("kind"), {})[(doc.get("metadata") or {}).get("name")] = doc

    def error(self, doc, path, message):
        self.errors.append(f"{name_of(doc) if doc else '(render)'}: {path}: {message}")

    def get(self, kind, name):
        return self.by_kind.get(kind, {}).get(name)

    def run(self):
        self.coordinator()
        self.worker()
        self.redis()
        self.network_policies()
        self.references()
        self.services()
        self.autoscalers()
        self.config_files()
        self.non_root()
        return self.errors

    def coordinator(self):
        deploy = self.get("Deployment", COORDINATOR)
        if deploy is None:
            self.error(None, "Deployment", f"no Deployment {COORDINATOR}")
            return
        spec = deploy.get("spec") or {}
        if spec.get("replicas", 1) != 1:
            self.error(deploy, "spec.replicas", "the coordinator must run exactly one replica")
        if (spec.get("strategy") or {}).get("type") != "Recreate":
            self.error(deploy, "spec.strategy.type", "must be Recreate (never two coordinators at once)")
        for container in containers(deploy):
            where = f"spec.template.spec.containers[{container.get('name')}]"
            live = container.get("livenessProbe") or {}
            ready = container.get("readinessProbe") or {}
            if "grpc" not in live:
                self.error(deploy, f"{where}.livenessProbe", "must be a grpc probe on grpc.health.v1")
            elif live["grpc"].get("service", "") != "":
                self.error(deploy, f"{where}.livenessProbe.grpc.service",
                           "liveness must ask the overall service \"\" (it must not depend on Redis)")
            if "grpc" not in ready or ready["grpc"].get("service") != READINESS_SERVICE:
                self.error(deploy, f"{where}.readinessProbe",
                           f"must be a grpc probe on service {READINESS_SERVICE!r} (Redis-aware readiness)")

    def worker(self):
        deploy = self.get("Deployment", WORKER)
        if deploy is None:
            self.error(None, "Deployment", f"no Deployment {WORKER}")
            return
        spec = pod_spec(deploy)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        toml_config = self.worker_toml(deploy)
        agent_grace = float((toml_config or {}).get("grace_period_s", 25.0))
        for container in containers(deploy):
            for env in container.get("env") or []:
                if env.get("name") == "TSWEEP_WORKER__GRACE_PERIOD_S" and "value" in env:
                    agent_grace = float(env["value"])
        if grace < agent_grace + GRACE_MARGIN_S:
            self.error(deploy, "spec.template.spec.terminationGracePeriodSeconds",
                       f"{grace} s does not cover the agent's grace_period_s {agent_grace:g} s "
                       f"+ {GRACE_MARGIN_S} s to release leases (checkpoints would be cut off)")
        for container in containers(deploy):
            resources = container.get("resources") or {}
            gpu_request = (resources.get("requests") or {}).get("nvidia.com/gpu")
            gpu_limit = (resources.get("limits") or {}).get("nvidia.com/gpu")
            where = f"spec.template.spec.containers[{container.get('name')}].resources"
            if self.expect == "gpu":
                if not gpu_limit:
                    self.error(deploy, where, "a GPU render must request nvidia.com/gpu")
                elif gpu_request is not None and str(gpu_request) != str(gpu_limit):
                    self.error(deploy, where, "nvidia.com/gpu request and limit must be equal")
                slots = (toml_config or {}).get("slots")
                if gpu_limit and slots is not None and int(slots) > int(gpu_limit):
                    self.error(deploy, where, f"slots = {slots} in worker.toml exceeds the {gpu_limit} GPU(s) requested")
            if self.expect == "cpu":
                if gpu_request or gpu_limit:
                    self.error(deploy, where, "a CPU-only render must not request nvidia.com/gpu")
                if toml_config is not None and toml_config.get("device") not in ("cpu", None):
                    self.error(deploy, "worker.toml", f"device = {toml_config.get('device')!r}: a CPU-only render needs device = \"cpu\"")
            if not (resources.get("requests") or {}).get("memory") or not (resources.get("limits") or {}).get("memory"):
                self.error(deploy, where, "needs memory requests and limits")

    def worker_toml(self, deploy):
        """The parsed worker.toml of the ConfigMap the worker mounts, if any."""
        for volume in pod_spec(deploy).get("volumes") or []:
            config_map = volume.get("configMap")
            if not config_map:
                continue
            found = self.get("ConfigMap", config_map.get("name"))
            if found and "worker.toml" in (found.get("data") or {}):
                try:
                    return tomllib.loads(found["data"]["worker.toml"])
                except tomllib.TOMLDecodeError as error:
                    self.error(found, "data.worker.toml", f"not valid TOML: {error}")
        return None

    def redis(self):
        statefulset = self.get("StatefulSet", "tsweep-redis")
        if statefulset is None:
            return  # an external Redis (components/external-redis)
        if not (statefulset.get("spec") or {}).get("volumeClaimTemplates"):
            self.error(statefulset, "spec.volumeClaimTemplates", "Redis needs its data on a PersistentVolumeClaim")
        for config_map in self.by_kind.get("ConfigMap", {}).values():
            conf = (config_map.get("data") or {}).get("redis.conf")
            if conf is not None:
                settings = {}
                for line in conf.splitlines():
                    parts = line.split(None, 1)
                    if parts and not parts[0].startswith("#"):
                        settings[parts[0].lower()] = parts[1].strip() if len(parts) > 1 else ""
                args = " ".join(" ".join(c.get("command") or []) + " " + " ".join(c.get("args") or [])
                                for c in containers(statefulset))
                if settings.get("appendonly") != "yes" and "--appendonly yes" not in args:
                    self.error(config_map, "data.redis.conf", "appendonly must be yes (tsweep's state lives in Redis)")

    def network_policies(self):
        """A NetworkPolicy in front of Redis must let the coordinator and the workers in."""
        for policy in self.by_kind.get("NetworkPolicy", {}).values():
            spec = policy.get("spec") or {}
            target = (spec.get("podSelector") or {}).get("matchLabels") or {}
            if target.get("app.kubernetes.io/name") != "tsweep-redis":
                continue
            selectors = [(peer.get("podSelector") or {}).get("matchLabels") or {}
                         for rule in spec.get("ingress") or [] for peer in rule.get("from") or []
                         if "podSelector" in peer and "namespaceSelector" not in peer]
            for name in (COORDINATOR, WORKER):
                deploy = self.get("Deployment", name)
                if deploy is None:
                    continue
                labels = ((deploy["spec"]["template"].get("metadata") or {}).get("labels")) or {}
                if not any(all(labels.get(k) == v for k, v in selector.items()) for selector in selectors):
                    self.error(policy, "spec.ingress", f"does not admit {name}'s pods (labels {labels}): they could not reach Redis")

    def references(self):
        for doc in self.docs:
            if doc.get("kind") not in POD_KINDS:
                continue
            spec = pod_spec(doc)
            for volume in spec.get("volumes") or []:
                if "configMap" in volume and not self.get("ConfigMap", volume["configMap"].get("name")) \
                        and not volume["configMap"].get("optional"):
                    self.error(doc, f"volumes[{volume.get('name')}]", f"ConfigMap {volume['configMap'].get('name')} is not in the render")
                if "secret" in volume:
                    self.secret_ref(doc, f"volumes[{volume.get('name')}]", volume["secret"].get("secretName"), volume["secret"].get("optional"))
                claim = volume.get("persistentVolumeClaim")
                if claim and not self.get("PersistentVolumeClaim", claim.get("claimName")):
                    self.error(doc, f"volumes[{volume.get('name')}]", f"PersistentVolumeClaim {claim.get('claimName')} is not in the render")
            for container in containers(doc):
                for env in container.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        self.secret_ref(doc, f"env[{env.get('name')}]", ref.get("name"), ref.get("optional"))
                    ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                    if ref and not self.get("ConfigMap", ref.get("name")) and not ref.get("optional"):
                        self.error(doc, f"env[{env.get('name')}]", f"ConfigMap {ref.get('name')} is not in the render")
                mounts = {m.get("name") for m in container.get("volumeMounts") or []}
                declared = {v.get("name") for v in spec.get("volumes") or []}
                declared |= {t["metadata"]["name"] for t in (doc.get("spec") or {}).get("volumeClaimTemplates") or []}
                for missing in sorted(mounts - declared):
                    self.error(doc, f"containers[{container.get('name')}].volumeMounts", f"volume {missing} is not declared")
            account = spec.get("serviceAccountName")
            if account and not self.get("ServiceAccount", account):
                self.error(doc, "spec.template.spec.serviceAccountName", f"ServiceAccount {account} is not in the render")
            priority = spec.get("priorityClassName")
            if priority and not self.get("PriorityClass", priority):
                self.error(doc, "spec.template.spec.priorityClassName", f"PriorityClass {priority} is not in the render")

    def secret_ref(self, doc, path, name, optional):
        if self.get("Secret", name) or optional or name in self.external_secrets:
            return
        self.error(doc, path, f"Secret {name} is neither in the render nor declared external (--external-secret)")

    def services(self):
        for service in self.by_kind.get("Service", {}).values():
            selector = (service.get("spec") or {}).get("selector") or {}
            backing = [d for d in self.docs if d.get("kind") in POD_KINDS and selector and all(
                ((d["spec"]["template"].get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())]
            if not backing:
                self.error(service, "spec.selector", f"{selector} selects no pod template in the render")
                continue
            port_names = {p.get("name") for d in backing for c in containers(d) for p in c.get("ports") or []}
            port_numbers = {p.get("containerPort") for d in backing for c in containers(d) for p in c.get("ports") or []}
            for port in (service.get("spec") or {}).get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                if target not in port_names and target not in port_numbers:
                    self.error(service, f"spec.ports[{port.get('name')}].targetPort", f"{target} is no container port of the selected pods")

    def autoscalers(self):
        scalers = list(self.by_kind.get("ScaledObject", {}).values()) + \
            list(self.by_kind.get("HorizontalPodAutoscaler", {}).values())
        targets = {}
        for scaler in scalers:
            ref = (scaler.get("spec") or {}).get("scaleTargetRef") or {}
            kind = ref.get("kind", "Deployment")
            if not self.get(kind, ref.get("name")):
                self.error(scaler, "spec.scaleTargetRef", f"{kind} {ref.get('name')} is not in the render")
            targets.setdefault((kind, ref.get("name")), []).append(name_of(scaler))
            if scaler.get("kind") == "ScaledObject":
                for index, trigger in enumerate((scaler.get("spec") or {}).get("triggers") or []):
                    if trigger.get("type") != "prometheus":
                        continue
                    metadata = trigger.get("metadata") or {}
                    for key in ("serverAddress", "query", "threshold"):
                        if not metadata.get(key):
                            self.error(scaler, f"spec.triggers[{index}].metadata.{key}", "required by the prometheus scaler")
                    if "tsweep_queue_depth" not in metadata.get("query", ""):
                        self.error(scaler, f"spec.triggers[{index}].metadata.query", "must scale on tsweep_queue_depth")
                    if not re.match(r"^https?://", metadata.get("serverAddress", "")):
                        self.error(scaler, f"spec.triggers[{index}].metadata.serverAddress", "must be an http(s):// URL")
        for (kind, name), owners in targets.items():
            if len(owners) > 1:
                self.error(None, f"{kind}/{name}", f"scaled by several autoscalers at once: {', '.join(owners)}")

    def config_files(self):
        """Service config keys (files and env) must be fields the binaries know."""
        for program, file_key, prefix, deployment in (
            ("coordinator", "coordinator.toml", "TSWEEP__", COORDINATOR),
            ("worker", "worker.toml", "TSWEEP_WORKER__", WORKER),
        ):
            known = self.config_keys.get(program)
            for config_map in self.by_kind.get("ConfigMap", {}).values():
                text = (config_map.get("data") or {}).get(file_key)
                if text is None:
                    continue
                try:
                    keys = set(tomllib.loads(text))
                except tomllib.TOMLDecodeError as error:
                    self.error(config_map, f"data.{file_key}", f"not valid TOML: {error}")
                    continue
                if known is not None:
                    for key in sorted(keys - known):
                        self.error(config_map, f"data.{file_key}", f"unknown key {key!r} (the {program} refuses it)")
            deploy = self.get("Deployment", deployment)
            if deploy is None or known is None:
                continue
            for container in containers(deploy):
                for env in container.get("env") or []:
                    name = env.get("name", "")
                    if name.startswith(prefix) and name[len(prefix):].lower() not in known:
                        self.error(deploy, f"env[{name}]", f"{name[len(prefix):].lower()!r} is no {program} setting")

    def non_root(self):
        for doc in self.docs:
            if doc.get("kind") not in POD_KINDS:
                continue
            context = pod_spec(doc).get("securityContext") or {}
            if not context.get("runAsNonRoot"):
                self.error(doc, "spec.template.spec.securityContext.runAsNonRoot", "must be true")
            for container in containers(doc):
                if (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
                    self.error(doc, f"containers[{container.get('name')}].securityContext.allowPrivilegeEscalation", "must be false")


# ---------------------------------------------------------------- driver

def load_render(path):
    with open(path, encoding="utf-8") as render:
        return [doc for doc in yaml.safe_load_all(render) if doc]


def validate_docs(docs, args, config_keys):
    """All errors of one render, as printable strings."""
    errors = []
    for doc in docs:
        errors += [f"{name_of(doc)}: {message}" for message in schema_errors(doc, args.kubernetes_version, args.schemas)]
    errors += Rules(docs, args.expect, args.external_secret, config_keys).run()
    return errors


def self_test(docs, args, config_keys):
    """Each breakage below must be caught; the unbroken render must pass."""
    def deployment(d, name):
        return next(x for x in d if x.get("kind") == "Deployment" and x["metadata"]["name"] == name)

    def scaled_object(d):
        return next(x for x in d if x.get("kind") == "ScaledObject")

    def set_liveness_ready(d):
        deployment(d, COORDINATOR)["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["service"] = READINESS_SERVICE

    def typo_in_deployment(d):
        deployment(d, WORKER)["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 120

    def wrong_type(d):
        deployment(d, COORDINATOR)["spec"]["replicas"] = "one"

    def keda_unknown_field(d):
        scaled_object(d)["spec"]["minReplicas"] = 0

    def keda_threshold_not_string(d):
        scaled_object(d)["spec"]["triggers"][0]["metadata"]["threshold"] = 1

    def keda_bad_fallback(d):
        scaled_object(d)["spec"]["fallback"]["behavior"] = "panic"

    def short_grace(d):
        deployment(d, WORKER)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30

    def no_gpu(d):
        del deployment(d, WORKER)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]

    def rolling_coordinator(d):
        deployment(d, COORDINATOR)["spec"]["strategy"] = {"type": "RollingUpdate"}

    def dangling_config_map(d):
        deployment(d, WORKER)["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] = "nope"

    def unknown_env_setting(d):
        deployment(d, WORKER)["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "TSWEEP_WORKER__SLOTZ", "value": "2"})

    def scaler_wrong_target(d):
        scaled_object(d)["spec"]["scaleTargetRef"]["name"] = "tsweep-workers"

    def unknown_kind(d):
        d.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": {"name": "x"}, "spec": {}})

    def redis_policy_shuts_out_worker(d):
        del deployment(d, WORKER)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"]

    breakages = [redis_policy_shuts_out_worker, set_liveness_ready, typo_in_deployment, wrong_type, keda_unknown_field,
                 keda_threshold_not_string, keda_bad_fallback, short_grace, no_gpu,
                 rolling_coordinator, dangling_config_map, unknown_env_setting,
                 scaler_wrong_target, unknown_kind]
    failures = 0
    baseline = validate_docs(docs, args, config_keys)
    if baseline:
        print("FAIL self-test: the unbroken render does not pass:\n  " + "\n  ".join(baseline))
        failures += 1
    for breakage in breakages:
        broken = copy.deepcopy(docs)
        breakage(broken)
        errors = validate_docs(broken, args, config_keys)
        if errors:
            print(f"ok   self-test {breakage.__name__}: rejected ({errors[0]})")
        else:
            print(f"FAIL self-test {breakage.__name__}: not rejected")
            failures += 1
    print(f"self-test: {len(breakages) + 1 - failures} of {len(breakages) + 1} checks as expected")
    return 1 if failures else 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("render", help="a rendered manifest stream (kubectl kustomize output)")
    parser.add_argument("label", nargs="?", help="name printed with the messages (default: the file name)")
    parser.add_argument("--kubernetes-version", default="1.31.0")
    parser.add_argument("--schemas", default=os.path.join(HERE, "k8s", "schemas"))
    parser.add_argument("--repo", default=os.path.dirname(HERE), help="repository root (for the Rust config structs)")
    parser.add_argument("--expect", choices=["gpu", "cpu"], help="what the worker must request")
    parser.add_argument("--external-secret", action="append", default=[],
                        help="a Secret created out of band (may be referenced without being rendered)")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args(argv)
    docs = load_render(args.render)
    config_keys = rust_config_keys(args.repo)
    label = args.label or args.render
    for program, keys in config_keys.items():
        if keys is None:
            print(f"WARN {label}: {program} config struct not found under {args.repo}: config keys not checked")
    if args.self_test:
        return self_test(docs, args, config_keys)
    errors = validate_docs(docs, args, config_keys)
    for message in errors:
        print(f"ERROR {label}: {message}")
    kinds = sorted({d.get("kind") for d in docs})
    status = "FAIL" if errors else "ok  "
    print(f"{status} {label}: {len(docs)} objects ({', '.join(kinds)}), Kubernetes {args.kubernetes_version} strict, "
          f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
