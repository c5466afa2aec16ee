#!/usr/bin/env python3
"""Runs the dev overlay's rendered objects as real containers with `podman kube play`.

    python deploy/local/cluster.py up [--scale tsweep-worker=2] [--set-env tsweep-worker:KEY=VALUE]
    python deploy/local/cluster.py status | probe | token | url
    python deploy/local/cluster.py scale tsweep-worker 3         # play or drain worker pods
    python deploy/local/cluster.py stop POD                      # SIGTERM, grace period, delete
    python deploy/local/cluster.py kill POD [CONTAINER]          # SIGKILL the process: restarted
    python deploy/local/cluster.py recreate POD                  # delete and play again, same volume
    python deploy/local/cluster.py down [--keep-volumes]

`kubectl kustomize deploy/local` (the dev overlay plus a locally built Redis image) gives
the objects; every ConfigMap, Secret, env variable, command line, security setting, probe
and volume of the pods is the rendered one. What podman 4.3 does not do is bridged here,
each bridge in one place (docs/operations.md, "Run the manifests on one machine"):

- Deployments and StatefulSets become Pods (`<deployment>-<n>`, `<statefulset>-<ordinal>`),
  one `podman kube play` each, so that scaling plays or drains one pod at a time.
- volumeClaimTemplates and PersistentVolumeClaims become podman named volumes, created
  once (owned by the pod's runAsUser:fsGroup) and kept across pods, like bound claims.
- Services: a podman network; a pod behind a Service gets a fixed address and every pod
  gets the Service names (`svc`, `svc.ns.svc.cluster.local`, `pod.svc` for a StatefulSet's
  headless Service) in /etc/hosts through hostAliases. The host reaches the Service
  addresses directly, in place of `kubectl port-forward`.
- Secrets become ConfigMap-backed volume files with the decoded values (podman 4.3's
  secret volumes dereference an unset `optional` and do not decode `data`); a volume or
  env variable naming a Secret that is not rendered fails the pod, as the kubelet does.
- Probes: podman 4.3 turns only livenessProbe into a healthcheck (exec, in the image; no
  gRPC), and runs healthchecks from systemd timers. Here the probes are taken out of the
  played pods and run by this script as the kubelet would, from the host: gRPC health
  checks, TCP connects and HTTP GETs against the pod address, exec inside the container,
  with each probe's port, service, command and timeout. Startup and readiness are waited
  for after each pod starts; `probe` runs every probe once.
- terminationGracePeriodSeconds becomes the stop timeout of `podman pod stop`.
- KEDA: none; `scale` sets the number of worker pods by hand.
- ServiceAccount, PriorityClass, NetworkPolicy, Namespace: nothing to run (no API server,
  one node, one private network that only these pods and the host reach).

A container that exits is restarted by podman (restartPolicy Always). A container that
exits while its pod starts is reported with its exit code and the end of its log, and
its pod is removed instead of looping (the log is kept in the state directory). Exit status: 0 ok, 2 bad input (a missing image,
Secret or ConfigMap, a configuration the container refused), 1 anything else.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOCAL = Path(__file__).resolve().parent
REPO = LOCAL.parent.parent
TSWEEP_CACHE = Path(os.environ.get("TSWEEP_CACHE", Path.home() / ".cache" / "tsweep"))
DEFAULT_STATE = TSWEEP_CACHE / "local-cluster"
DEFAULT_NETWORK = "tsweep-local"
DEFAULT_SUBNET = "10.89.42.0/24"
# Exit codes of tsweep's binaries (coordinator/src/cli/error.rs): 2 is bad input.
BAD_INPUT_EXIT = 2
POLL_S = 0.25
# The label that ties a played pod to its cluster (its network): pod names are global in
# podman, and two clusters on one machine must not touch each other's pods.
CLUSTER_LABEL = "tsweep.local/cluster"


class ClusterError(Exception):
    """A failure of the pods or of podman (exit status 1)."""

    exit_code = 1


class BadInput(ClusterError):
    """What the user gave cannot run: a missing image, Secret or ConfigMap, a refused config."""

    exit_code = 2


def log(message: str) -> None:
    print(f"local: {message}", flush=True)


# --- podman ---------------------------------------------------------------------------


def podman_env() -> dict[str, str]:
    """The environment of every podman call: CONTAINERS_CONF from deploy/local/podman-env.sh."""
    env = dict(os.environ)
    if not env.get("CONTAINERS_CONF"):
        out = subprocess.run(
            ["bash", "-c", f'source "{LOCAL}/podman-env.sh" && printf %s "$CONTAINERS_CONF"'],
            capture_output=True,
            text=True,
            check=True,
        )
        env["CONTAINERS_CONF"] = out.stdout
        os.environ["CONTAINERS_CONF"] = out.stdout
    return env


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise ClusterError("podman is not installed (scripts/setup.sh installs podman, runc and catatonit)") from e
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"podman {' '.join(args[:2])} did not finish within {timeout} s") from e
    if check and done.returncode != 0:
        raise ClusterError(f"podman {' '.join(args)}: {last_line(done.stderr) or f'exit {done.returncode}'}")
    return done


def podman_json(*args: str) -> Any:
    return json.loads(podman(*args).stdout or "null")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def container_state(name: str) -> dict[str, Any] | None:
    done = podman("inspect", "--type", "container", name, check=False)
    if done.returncode != 0:
        return None
    info = json.loads(done.stdout)[0]
    state = info["State"]
    return {
        "status": state.get("Status", ""),
        "exit_code": state.get("ExitCode", 0),
        "pid": state.get("Pid", 0),
        "started": state.get("StartedAt", ""),
        "restarts": info.get("RestartCount", 0),
        "image": info.get("ImageName", ""),
    }


def container_log(name: str, lines: int = 20) -> str:
    """The last lines of a container's log (podman 4.3's `logs --tail` splits long lines)."""
    done = podman("logs", name, check=False)
    return "\n".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


def collapse_repeats(lines: list[str]) -> list[str]:
    """Consecutive identical lines once, with their count: a restart loop logs the same error."""
    out: list[str] = []
    counts: list[int] = []
    for line in lines:
        if out and out[-1] == line:
            counts[-1] += 1
        else:
            out.append(line)
            counts.append(1)
    return [line + (f"  (x{n})" if n > 1 else "") for line, n in zip(out, counts)]


# --- the rendered objects and the bridges ---------------------------------------------


@dataclass
class Probe:
    container: str
    kind: str  # startup | liveness | readiness
    spec: dict[str, Any]
    ports: dict[str, int]

    def describe(self) -> str:
        spec = self.spec
        if "grpc" in spec:
            service = spec["grpc"].get("service", "")
            return f"grpc :{spec['grpc']['port']} service {service!r}"
        if "tcpSocket" in spec:
            return f"tcp :{spec['tcpSocket']['port']}"
        if "httpGet" in spec:
            return f"http :{spec['httpGet']['port']}{spec['httpGet'].get('path', '/')}"
        if "exec" in spec:
            return "exec " + " ".join(spec["exec"]["command"])
        return "unknown handler"


@dataclass
class PodPlan:
    """One pod as it is played: its manifest, its ConfigMaps, its volumes and probes."""

    name: str
    workload: str
    manifest: dict[str, Any]
    configmaps: list[dict[str, Any]]
    claims: dict[str, tuple[int | None, int | None]]  # named volume -> (uid, gid)
    probes: list[Probe]
    grace_s: int
    ip: str | None
    containers: list[str] = field(default_factory=list)

    def container_name(self, container: str) -> str:
        return f"{self.name}-{container}"


@dataclass
class Workload:
    kind: str
    name: str
    obj: dict[str, Any]
    replicas: int
    ip: str | None = None
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)  # container -> env

    @property
    def template(self) -> dict[str, Any]:
        return self.obj["spec"]["template"]

    def pod_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    @property
    def first_index(self) -> int:
        return 0 if self.kind == "StatefulSet" else 1


class Plan:
    """The rendered objects, read once: what runs, and how each pod is bridged."""

    def __init__(self, objects: list[dict[str, Any]], subnet: str, cluster: str):
        self.cluster = cluster
        self.namespace = "default"
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.services: list[dict[str, Any]] = []
        self.claims: dict[str, dict[str, Any]] = {}
        self.workloads: list[Workload] = []
        self.ignored: list[str] = []
        for obj in objects:
            kind = obj.get("kind", "")
            name = obj.get("metadata", {}).get("name", "")
            if kind == "Namespace":
                self.namespace = name
            elif kind == "ConfigMap":
                self.configmaps[name] = obj
            elif kind == "Secret":
                self.secrets[name] = obj
            elif kind == "Service":
                self.services.append(obj)
            elif kind == "PersistentVolumeClaim":
                self.claims[name] = obj
            elif kind in ("Deployment", "StatefulSet"):
                replicas = obj["spec"].get("replicas", 1)
                self.workloads.append(Workload(kind, name, obj, int(replicas)))
            else:
                self.ignored.append(f"{kind}/{name}")
        # State first (StatefulSets), then what a Service fronts, then the rest: the order
        # in which `up` plays them, and in which the Service addresses are handed out.
        fronted = {w.name for w in self.workloads if self.services_of(w)}
        self.workloads.sort(key=lambda w: (w.kind != "StatefulSet", w.name not in fronted, w.name))
        self.assign_addresses(subnet)

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in self.workloads)
        raise BadInput(f"no Deployment or StatefulSet named {name!r} in the rendered objects ({known})")

    def workload_of_pod(self, pod: str) -> tuple[Workload, int]:
        for w in self.workloads:
            prefix = w.name + "-"
            if pod.startswith(prefix) and pod[len(prefix) :].isdigit():
                return w, int(pod[len(prefix) :])
        raise BadInput(f"{pod!r} is not a pod of this cluster (pods are <workload>-<n>: status lists them)")

    def services_of(self, w: Workload) -> list[dict[str, Any]]:
        labels = w.template.get("metadata", {}).get("labels", {})
        return [
            s
            for s in self.services
            if s["spec"].get("selector")
            and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
        ]

    def assign_addresses(self, subnet: str) -> None:
        network, prefix = subnet.split("/")
        if prefix != "24":
            raise BadInput(f"--subnet {subnet}: deploy/local uses a /24 network")
        base = network.rsplit(".", 1)[0]
        host = 2  # .1 is the bridge; pods behind Services are played first and take .2, .3, ...
        for w in self.workloads:
            services = self.services_of(w)
            if not services:
                continue
            if w.replicas > 1:
                names = ", ".join(s["metadata"]["name"] for s in services)
                raise BadInput(f"{w.kind} {w.name}: Service {names} in front of {w.replicas} replicas "
                               "(deploy/local gives a Service one pod's address)")
            named = {p["name"]: p["containerPort"] for c in w.template["spec"]["containers"]
                     for p in c.get("ports", []) if "name" in p}
            for s in services:
                for port in s["spec"].get("ports", []):
                    target = port.get("targetPort", port["port"])
                    target = named.get(target, target) if isinstance(target, str) else target
                    if target != port["port"]:
                        raise BadInput(f"Service {s['metadata']['name']}: port {port['port']} -> {target} "
                                       "(deploy/local needs a Service port equal to its container port)")
            w.ip = f"{base}.{host}"
            host += 1

    def host_aliases(self) -> list[dict[str, Any]]:
        """Every Service name a pod may use, with the address of the pod behind it."""
        ns = self.namespace
        by_ip: dict[str, list[str]] = {}
        for w in self.workloads:
            if w.ip is None:
                continue
            names = by_ip.setdefault(w.ip, [])
            for s in self.services_of(w):
                svc = s["metadata"]["name"]
                names += [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
                if w.kind == "StatefulSet" and w.obj["spec"].get("serviceName") == svc:
                    pod = w.pod_name(0)
                    names += [f"{pod}.{svc}", f"{pod}.{svc}.{ns}.svc", f"{pod}.{svc}.{ns}.svc.cluster.local"]
        return [{"ip": ip, "hostnames": names} for ip, names in by_ip.items()]

    def service_url(self, service: str, port_name: str) -> str:
        for s in self.services:
            if s["metadata"]["name"] != service:
                continue
            for w in self.workloads:
                if s in self.services_of(w) and w.ip:
                    for port in s["spec"]["ports"]:
                        if port.get("name") == port_name:
                            return f"{w.ip}:{port['port']}"
        raise ClusterError(f"Service {service} has no port {port_name!r} in the rendered objects")

    def secret_value(self, name_prefix: str, key: str) -> str:
        for name, secret in self.secrets.items():
            if name == name_prefix or name.startswith(name_prefix + "-"):
                return secret_data(secret)[key]
        raise BadInput(f"secret {name_prefix!r} not found in the rendered objects")

    def pod(self, w: Workload, index: int) -> PodPlan:
        name = w.pod_name(index)
        spec = copy.deepcopy(w.template["spec"])
        labels = dict(w.template.get("metadata", {}).get("labels", {})) | {CLUSTER_LABEL: self.cluster}
        annotations = dict(w.template.get("metadata", {}).get("annotations", {}))
        security = spec.get("securityContext", {})
        volumes = spec.setdefault("volumes", [])
        for volume in volumes:
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in self.claims:
                raise BadInput(f"pod {name}: persistentvolumeclaim {claim!r} not found (volume {volume['name']!r})")
        # volumeClaimTemplates: one claim per StatefulSet pod, <template>-<pod>.
        for template in w.obj["spec"].get("volumeClaimTemplates", []):
            claim = f"{template['metadata']['name']}-{name}"
            volumes.append({"name": template["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
        # Podman names the volume of a ConfigMap after it, and claims are named volumes:
        # both get the cluster's name in front, so that two clusters never share one.
        prefix = f"{self.cluster}-"
        configmaps: dict[str, dict[str, Any]] = {}
        claims: dict[str, tuple[int | None, int | None]] = {}
        owner = (security.get("runAsUser"), security.get("fsGroup", security.get("runAsGroup")))

        def use_configmap(cm: str, where: str) -> str:
            if cm not in self.configmaps:
                raise BadInput(f"pod {name}: configmap {cm!r} not found ({where})")
            configmaps[cm] = renamed(self.configmaps[cm], prefix + cm)
            return prefix + cm

        def use_secret(secret: str, where: str) -> dict[str, str]:
            if secret not in self.secrets:
                raise BadInput(f"pod {name}: secret {secret!r} not found ({where}): create it, as the kubelet "
                               "would wait for it")
            configmaps[secret] = renamed(secret_as_configmap(self.secrets[secret]), prefix + secret)
            return secret_data(self.secrets[secret])

        for volume in volumes:
            where = f"volume {volume['name']!r}"
            if "configMap" in volume:
                source = volume["configMap"]
                if source["name"] in self.configmaps or not source.get("optional"):
                    source["name"] = use_configmap(source["name"], where)
            elif "secret" in volume:
                source = volume.pop("secret")
                use_secret(source["secretName"], where)
                volume["configMap"] = {k: v for k, v in source.items() if k != "secretName"} | {
                    "name": prefix + source["secretName"]
                }
            elif "persistentVolumeClaim" in volume:
                claim = prefix + volume["persistentVolumeClaim"]["claimName"]
                volume["persistentVolumeClaim"]["claimName"] = claim
                claims[claim] = owner
        probes: list[Probe] = []
        for container in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
            for kind in ("startup", "liveness", "readiness"):
                probe = container.pop(f"{kind}Probe", None)
                if probe:
                    probes.append(Probe(container["name"], kind, probe, ports))
            env = container.setdefault("env", [])
            for var in env:
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret = ref["secretKeyRef"]
                    var["value"] = use_secret(secret["name"], f"env {var['name']}")[secret["key"]]
                    var.pop("valueFrom")
                elif "configMapKeyRef" in ref:
                    ref["configMapKeyRef"]["name"] = use_configmap(ref["configMapKeyRef"]["name"], f"env {var['name']}")
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    source["configMapRef"]["name"] = use_configmap(source["configMapRef"]["name"], "envFrom")
                if "secretRef" in source:
                    for key, value in use_secret(source.pop("secretRef")["name"], "envFrom").items():
                        env.append({"name": source.get("prefix", "") + key, "value": value})
            for key, value in w.extra_env.get(container["name"], {}).items():
                env[:] = [v for v in env if v["name"] != key] + [{"name": key, "value": value}]
        spec["hostAliases"] = spec.get("hostAliases", []) + self.host_aliases()
        spec.setdefault("hostname", name)
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": spec,
        }
        return PodPlan(
            name=name,
            workload=w.name,
            manifest=manifest,
            configmaps=list(configmaps.values()),
            claims=claims,
            probes=probes,
            grace_s=int(spec.get("terminationGracePeriodSeconds", 30)),
            ip=w.ip,
            containers=[c["name"] for c in spec["containers"]],
        )


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def renamed(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return obj | {"metadata": obj["metadata"] | {"name": name}}


def secret_as_configmap(secret: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": secret["metadata"]["name"]},
        "data": secret_data(secret),
    }


# --- probes, run as the kubelet would -------------------------------------------------


def run_probe(probe: Probe, pod_ip: str, container: str) -> tuple[bool, str]:
    """One probe: (passed, what it answered)."""
    spec = probe.spec
    timeout = float(spec.get("timeoutSeconds", 1))

    def port_of(value: Any) -> int:
        if isinstance(value, int):
            return value
        if value in probe.ports:
            return probe.ports[value]
        raise BadInput(f"probe of {container}: no container port named {value!r}")

    if "grpc" in spec:
        import grpc  # grpcio: scripts/setup.sh installs it into the venv
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        service = spec["grpc"].get("service", "")
        with grpc.insecure_channel(f"{pod_ip}:{port_of(spec['grpc']['port'])}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout
                )
            except grpc.RpcError as e:
                return False, f"{e.code().name}"  # type: ignore[attr-defined]
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return reply.status == health_pb2.HealthCheckResponse.SERVING, status
    if "tcpSocket" in spec:
        host = spec["tcpSocket"].get("host", pod_ip)
        try:
            with socket.create_connection((host, port_of(spec["tcpSocket"]["port"])), timeout=timeout):
                return True, "connected"
        except OSError as e:
            return False, str(e)
    if "httpGet" in spec:
        get = spec["httpGet"]
        url = f"{get.get('scheme', 'HTTP').lower()}://{get.get('host', pod_ip)}:{port_of(get['port'])}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                return 200 <= reply.status < 400, f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as e:
            return False, str(e)
    if "exec" in spec:
        try:
            done = podman("exec", container, *spec["exec"]["command"], check=False, timeout=timeout + 5)
        except ClusterError as e:
            return False, str(e)
        return done.returncode == 0, f"exit {done.returncode}"
    return False, "no handler podman can run"


# --- the cluster ------------------------------------------------------------------------


class Cluster:
    def __init__(self, state_dir: Path, network: str, subnet: str, kustomization: Path | None = None):
        self.state_dir = state_dir
        self.network = network
        self.subnet = subnet
        self.kustomization = kustomization
        self._plan: Plan | None = None

    # rendering

    @property
    def rendered_path(self) -> Path:
        return self.state_dir / "rendered.yaml"

    def render(self) -> None:
        """`kubectl kustomize` of the kustomization, kept for every later command."""
        kubectl = os.environ.get("KUBECTL") or find_kubectl()
        directory = self.kustomization or LOCAL
        done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BadInput(f"kubectl kustomize {directory}: {last_line(done.stderr)}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.rendered_path.write_text(done.stdout)
        for old in (self.state_dir / "logs").glob("*.log"):
            old.unlink()
        self._plan = None

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            if not self.rendered_path.exists():
                raise ClusterError(f"nothing rendered in {self.state_dir}: run `up` first")
            objects = [d for d in yaml.safe_load_all(self.rendered_path.read_text()) if d]
            self._plan = Plan(objects, self.subnet, self.network)
            overrides = self.state_dir / "overrides.json"
            if overrides.exists():
                for name, env in json.loads(overrides.read_text()).items():
                    self._plan.workload(name).extra_env = env
        return self._plan

    def set_env(self, assignments: list[str]) -> None:
        """`kubectl set env`: WORKLOAD[:CONTAINER]:KEY=VALUE, on top of the rendered env."""
        overrides: dict[str, dict[str, dict[str, str]]] = {}
        for item in assignments:
            target, _, assignment = item.rpartition(":")
            key, eq, value = assignment.partition("=")
            if not target or not eq or not key:
                raise BadInput(f"--set-env {item!r}: expected WORKLOAD[:CONTAINER]:KEY=VALUE")
            workload, _, container = target.partition(":")
            w = self.plan.workload(workload)
            container = container or w.template["spec"]["containers"][0]["name"]
            overrides.setdefault(workload, {}).setdefault(container, {})[key] = value
        (self.state_dir / "overrides.json").write_text(json.dumps(overrides))
        self._plan = None

    # pods

    def running_pods(self, workload: str | None = None) -> list[str]:
        """This cluster's pods, by name (<workload>-<n>), in order."""
        label = f"{CLUSTER_LABEL}={self.network}"
        pods = podman_json("pod", "ps", "--filter", f"label={label}", "--format", "json") or []
        names = sorted((p["Name"] for p in pods), key=pod_sort_key)
        if workload is None:
            return names
        w = self.plan.workload(workload)
        return [n for n in names if self.plan.workload_of_pod(n)[0] is w]

    def pod_ip(self, pod: str) -> str:
        info = podman_json("pod", "inspect", pod)
        infra = info["InfraContainerID"]
        networks = podman_json("inspect", "--type", "container", infra)[0]["NetworkSettings"]["Networks"]
        return networks[self.network]["IPAddress"]

    def ensure_network(self) -> None:
        if podman("network", "exists", self.network, check=False).returncode != 0:
            podman("network", "create", "--subnet", self.subnet, self.network)
            log(f"network {self.network} ({self.subnet})")

    def ensure_claims(self, pod: PodPlan) -> None:
        for claim, (uid, gid) in pod.claims.items():
            if podman("volume", "exists", claim, check=False).returncode == 0:
                continue
            # fsGroup: the claim's volume starts out owned by the pod's user and group.
            opts = [f"uid={uid}"] if uid is not None else []
            opts += [f"gid={gid}"] if gid is not None else []
            podman("volume", "create", *(["--opt", "o=" + ",".join(opts)] if opts else []), claim)
            log(f"volume {claim} (claim, owner {uid}:{gid})")

    def play(self, pod: PodPlan, wait: bool = True, timeout_s: float = 120.0) -> float:
        """Plays one pod and waits until it has started and is ready. Returns the seconds it took."""
        started = time.monotonic()
        played_at = time.time() - 1
        if podman("pod", "exists", pod.name, check=False).returncode == 0:
            raise ClusterError(f"a pod named {pod.name} exists outside this cluster ({self.network}): "
                               "`down` the cluster it belongs to first (podman pod ls shows it)")
        self.ensure_network()
        self.ensure_claims(pod)
        pods_dir = self.state_dir / "pods"
        pods_dir.mkdir(parents=True, exist_ok=True)
        path = pods_dir / f"{pod.name}.yaml"
        path.write_text(yaml.safe_dump_all([*pod.configmaps, pod.manifest], sort_keys=False))
        args = ["kube", "play", "--network", self.network]
        if pod.ip:
            # A fixed MAC with the fixed address: a pod played again answers ARP with the
            # same MAC, so no neighbour (the host, other pods) keeps a stale entry.
            args += ["--ip", pod.ip, "--mac-address", mac_for(pod.ip)]
        done = podman(*args, str(path), check=False)
        images = [c["image"] for c in pod.manifest["spec"]["containers"]]
        missing = [i for i in images if podman("image", "exists", i, check=False).returncode != 0]
        if missing:
            self.remove_pod(pod.name)
            raise BadInput(f"pod {pod.name}: image {missing[0]} is not in podman's store and cannot be pulled "
                           f"({last_line(done.stderr)}); deploy/local/build-images.sh builds the tsweep images")
        if done.returncode != 0 or podman("pod", "exists", pod.name, check=False).returncode != 0:
            raise ClusterError(f"pod {pod.name}: podman kube play {path}: {last_line(done.stderr)}")
        log(f"pod {pod.name} played" + (f" at {pod.ip}" if pod.ip else ""))
        if wait:
            self.wait_started(pod, timeout_s, since=played_at)
        return time.monotonic() - started

    def pod_plan(self, pod: str) -> PodPlan:
        w, index = self.plan.workload_of_pod(pod)
        return self.plan.pod(w, index)

    def check_running(self, pod: PodPlan, restarts_before: dict[str, int], since: float) -> None:
        """Fails when a container exited or restarted since `since` (unix time): its exit
        code (podman's `died` event: a restarted container's state has it no longer) and the
        end of its log. The container is stopped, so that podman's restarts end."""
        for container in pod.containers:
            name = pod.container_name(container)
            state = container_state(name)
            if state is None:
                raise ClusterError(f"pod {pod.name}: container {name} is gone")
            if state["status"] == "running" and state["restarts"] == restarts_before.get(container, 0):
                continue
            if state["status"] in ("created", "initialized", "configured") and state["restarts"] == 0:
                continue
            died = podman("events", "--stream=false", "--since", str(int(since)), "--filter", f"container={name}",
                          "--filter", "event=died", "--format", "{{.ContainerExitCode}}", check=False)
            codes = [int(c) for c in died.stdout.split() if c.lstrip("-").isdigit()]
            code = codes[0] if codes else state["exit_code"]
            restarts = (container_state(name) or state)["restarts"]
            # The pod goes, its logs stay: a stop cannot be timed to keep podman from
            # restarting a container that exits within milliseconds of each start.
            saved = self.save_logs(pod)
            tail = container_log(name, 40)
            self.remove_pod(pod.name)
            lines = "\n".join("    " + line for line in collapse_repeats(tail.splitlines())[-8:])
            message = (f"pod {pod.name}: container {container} exited with code {code} (restarted {restarts} "
                       f"times; the pod is removed to end the loop, its log is in {saved[container]}); "
                       f"its log ends:\n{lines}")
            if code == BAD_INPUT_EXIT:
                raise BadInput(message)
            raise ClusterError(message)

    def wait_started(self, pod: PodPlan, timeout_s: float, since: float | None = None) -> None:
        """Waits for every startup probe, then every readiness probe, watching for exits
        (since `since`, unix time: the pod's play by default)."""
        since = time.time() - 1 if since is None else since
        baseline = {c: (container_state(pod.container_name(c)) or {}).get("restarts", 0) for c in pod.containers}
        ip = self.pod_ip(pod.name)
        for kind in ("startup", "readiness"):
            for probe in (p for p in pod.probes if p.kind == kind):
                spec = probe.spec
                limit = spec.get("initialDelaySeconds", 0) + spec.get("periodSeconds", 10) * spec.get(
                    "failureThreshold", 3
                )
                deadline = time.monotonic() + (limit if kind == "startup" else timeout_s)
                detail = ""
                while True:
                    self.check_running(pod, baseline, since)
                    ok, detail = run_probe(probe, ip, pod.container_name(probe.container))
                    if ok:
                        log(f"pod {pod.name}: {kind} probe of {probe.container} ({probe.describe()}): {detail}")
                        break
                    if time.monotonic() > deadline:
                        raise ClusterError(f"pod {pod.name}: {kind} probe of {probe.container} "
                                           f"({probe.describe()}) still failing: {detail}")
                    time.sleep(POLL_S)
        self.check_running(pod, baseline, since)

    def probe_all(self, pods: list[str] | None = None) -> list[dict[str, Any]]:
        """Runs every probe of every pod once."""
        results = []
        for name in pods or self.running_pods():
            pod = self.pod_plan(name)
            ip = self.pod_ip(name)
            for probe in pod.probes:
                ok, detail = run_probe(probe, ip, pod.container_name(probe.container))
                results.append({"pod": name, "container": probe.container, "kind": probe.kind,
                                "probe": probe.describe(), "ok": ok, "answer": detail})
        return results

    def remove_pod(self, name: str) -> None:
        podman("pod", "rm", "-f", name, check=False)

    def stop(self, name: str) -> dict[str, Any]:
        """Deletes a pod as Kubernetes does: SIGTERM, up to terminationGracePeriodSeconds, SIGKILL.

        The containers are stopped before the pod: `podman pod stop` would stop the infra
        container (the pod's network) at the same time, and a draining worker could no
        longer report its preempted tasks. Their logs are kept in the state directory.
        """
        pod = self.pod_plan(name)
        started = time.monotonic()
        containers = [pod.container_name(c) for c in pod.containers]
        podman("stop", "-t", str(pod.grace_s), *containers, timeout=pod.grace_s + 60)
        seconds = time.monotonic() - started
        codes = {c: (container_state(pod.container_name(c)) or {}).get("exit_code") for c in pod.containers}
        self.save_logs(pod)
        self.remove_pod(name)
        log(f"pod {name} stopped in {seconds:.1f} s (grace {pod.grace_s} s), exit codes {codes}")
        return {"pod": name, "seconds": seconds, "grace_s": pod.grace_s, "exit_codes": codes}

    def save_logs(self, pod: PodPlan) -> dict[str, Path]:
        """Appends each container's log to <state>/logs/<pod>-<container>.log."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        saved = {}
        for container in pod.containers:
            done = podman("logs", pod.container_name(container), check=False)
            saved[container] = logs / f"{pod.container_name(container)}.log"
            with open(saved[container], "a") as out:
                out.write(done.stdout + done.stderr)
        return saved

    def kill(self, name: str, container: str | None = None, timeout_s: float = 120.0) -> float:
        """SIGKILLs a container's process (a crash, an OOM kill); podman restarts it. Returns
        the seconds until it was started and ready again."""
        pod = self.pod_plan(name)
        container = container or pod.containers[0]
        ctr = pod.container_name(container)
        before = container_state(ctr)
        if before is None or before["status"] != "running":
            raise ClusterError(f"{ctr} is not running")
        started = time.monotonic()
        os.kill(before["pid"], signal.SIGKILL)
        deadline = started + timeout_s
        while True:
            state = container_state(ctr)
            if state and state["restarts"] > before["restarts"] and state["status"] == "running":
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"{ctr} was not restarted within {timeout_s:.0f} s")
            time.sleep(POLL_S)
        self.wait_started(pod, timeout_s)
        seconds = time.monotonic() - started
        log(f"{ctr} killed and back in {seconds:.1f} s")
        return seconds

    def recreate(self, name: str) -> float:
        """Deletes the pod (grace period) and plays it again: a StatefulSet pod on its claim."""
        self.stop(name)
        return self.play(self.pod_plan(name))

    def scale(self, workload: str, replicas: int) -> list[dict[str, Any]]:
        w = self.plan.workload(workload)
        current = self.running_pods(workload)
        stopped = []
        if replicas > len(current):
            last = max((self.plan.workload_of_pod(p)[1] for p in current), default=w.first_index - 1)
            for index in range(last + 1, last + 1 + replicas - len(current)):
                self.play(self.plan.pod(w, index))
        for name in current[replicas:][::-1]:  # newest first
            stopped.append(self.stop(name))
        return stopped

    def up(self, scale: dict[str, int], wait: bool = True) -> dict[str, float]:
        """Plays every workload in order; returns when each pod is started and ready."""
        started = time.monotonic()
        times: dict[str, float] = {}
        for w in self.plan.workloads:
            for index in range(w.first_index, w.first_index + scale.get(w.name, w.replicas)):
                pod = self.plan.pod(w, index)
                if pod.name in self.running_pods():
                    log(f"pod {pod.name} is already running")
                    continue
                self.play(pod, wait=wait)
                times[pod.name] = time.monotonic() - started
        for item in self.plan.ignored:
            log(f"not run (nothing to run without an API server): {item}")
        return times

    def down(self, keep_volumes: bool = False) -> None:
        plan = self.plan if self.rendered_path.exists() else None
        for name in self.running_pods()[::-1]:
            try:
                if plan is None:
                    raise ClusterError("nothing rendered: removed without its grace period")
                self.stop(name)
            except ClusterError as e:
                log(f"{name}: {e}")
                self.remove_pod(name)
        # The cluster's volumes carry its name in front (Plan.pod): its ConfigMaps and Secrets
        # and, unless kept, its claims. Nothing uses them once the pods are gone.
        prefix = f"{self.network}-"
        config = set(plan.configmaps) | set(plan.secrets) if plan else set()
        for volume in podman_json("volume", "ls", "--format", "json") or []:
            name = volume["Name"]
            if not name.startswith(prefix) or (keep_volumes and name[len(prefix) :] not in config):
                continue
            podman("volume", "rm", name, check=False)
        podman("network", "rm", "-f", self.network, check=False)
        log("down" + (" (claims kept)" if keep_volumes else ""))

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.running_pods():
            pod = self.pod_plan(name)
            for container in pod.containers:
                state = container_state(pod.container_name(container)) or {}
                rows.append({"pod": name, "container": container, "ip": self.pod_ip(name),
                             "status": state.get("status"), "restarts": state.get("restarts"),
                             "exit_code": state.get("exit_code"), "image": state.get("image")})
        return rows


def mac_for(ip: str) -> str:
    """A locally administered MAC that encodes the IPv4 address (02:42:a:b:c:d)."""
    return "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))


def pod_sort_key(name: str) -> tuple[str, int]:
    base, _, index = name.rpartition("-")
    return (base, int(index)) if index.isdigit() else (name, 0)


def find_kubectl() -> str:
    venv = Path(os.environ.get("TSWEEP_VENV", TSWEEP_CACHE / "venv-torch-2.11.0"))
    candidate = venv / "bin" / "kubectl"
    if candidate.exists():
        return str(candidate)
    return "kubectl"


# --- command line -------------------------------------------------------------------------


def parse_scale(items: list[str]) -> dict[str, int]:
    scale = {}
    for item in items:
        name, eq, count = item.partition("=")
        if not eq or not count.isdigit():
            raise BadInput(f"--scale {item!r}: expected WORKLOAD=N")
        scale[name] = int(count)
    return scale


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--state", type=Path, default=Path(os.environ.get("TSWEEP_LOCAL_STATE", DEFAULT_STATE)),
                        help="where the rendered objects and pod files are kept")
    parser.add_argument("--network", default=os.environ.get("TSWEEP_LOCAL_NETWORK", DEFAULT_NETWORK))
    parser.add_argument("--subnet", default=os.environ.get("TSWEEP_LOCAL_SUBNET", DEFAULT_SUBNET))
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="render and play every workload")
    up.add_argument("-k", "--kustomization", type=Path, help="directory to render (default: deploy/local)")
    up.add_argument("--scale", action="append", default=[], metavar="WORKLOAD=N")
    up.add_argument("--set-env", action="append", default=[], metavar="WORKLOAD[:CONTAINER]:KEY=VALUE")
    sub.add_parser("status", help="pods, containers, addresses, restarts")
    sub.add_parser("probe", help="run every probe of every pod once")
    sub.add_parser("token", help="the bearer token of the rendered Secret tsweep-auth")
    sub.add_parser("url", help="the coordinator's gRPC address for the host CLI")
    scale = sub.add_parser("scale", help="play or drain pods of a workload")
    scale.add_argument("workload")
    scale.add_argument("replicas", type=int)
    for name, text in (("stop", "SIGTERM, grace period, delete"), ("recreate", "delete and play again")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("pod")
    kill = sub.add_parser("kill", help="SIGKILL a container's process and wait for its restart")
    kill.add_argument("pod")
    kill.add_argument("container", nargs="?")
    down = sub.add_parser("down", help="remove the pods, their volumes and the network")
    down.add_argument("--keep-volumes", action="store_true", help="keep the claims (Redis' AOF, /shared)")
    args = parser.parse_args(argv)

    cluster = Cluster(args.state, args.network, args.subnet, getattr(args, "kustomization", None))
    try:
        if args.command == "up":
            cluster.render()
            cluster.set_env(args.set_env)
            cluster.up(parse_scale(args.scale))
            log(f"coordinator at http://{cluster.plan.service_url('tsweep-coordinator', 'grpc')}")
        elif args.command == "status":
            for row in cluster.status():
                print(json.dumps(row))
        elif args.command == "probe":
            results = cluster.probe_all()
            for row in results:
                print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['pod']}/{row['container']} {row['kind']} "
                      f"{row['probe']}: {row['answer']}")
            return 0 if all(r["ok"] for r in results) else 1
        elif args.command == "token":
            print(cluster.plan.secret_value("tsweep-auth", "token"))
        elif args.command == "url":
            print(f"http://{cluster.plan.service_url('tsweep-coordinator', 'grpc')}")
        elif args.command == "scale":
            cluster.scale(args.workload, args.replicas)
        elif args.command == "stop":
            cluster.stop(args.pod)
        elif args.command == "recreate":
            cluster.recreate(args.pod)
        elif args.command == "kill":
            cluster.kill(args.pod, args.container)
        elif args.command == "down":
            cluster.down(args.keep_volumes)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
