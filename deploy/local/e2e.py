#!/usr/bin/env python3
"""The manifests as real pods, end to end (run by deploy/local/test.sh, which builds the images).

    python deploy/local/e2e.py --cli TARGET/debug/tsweep

1. Bad input, each through `cluster.py up` (exit 2, one clear line, the pod's own log where
   a container ran): a missing image, a missing Secret, an unknown key in the coordinator's
   ConfigMap (the container's error is shown and its restart loop ended).
2. The dev overlay (deploy/local) with the fake executor (`kubectl set env` of
   TSWEEP_WORKER__EXECUTOR=fake): Redis, the coordinator, two workers; a sweep submitted
   from the host CLI; the probes answer; scale up to three; one worker pod deleted
   (SIGTERM, grace period: its tasks checkpoint and resume on other pods); the
   coordinator's process SIGKILLed (podman restarts it: no lease lost, no task re-run);
   Redis' pod deleted and played again on its claim (its AOF: nothing lost; meanwhile the
   coordinator is alive but not ready); scale down to one; the sweep to `done`.
3. Every cell succeeded exactly once (Redis' `accepted` count), no retry budget spent, no
   lease expired, no stale report; the SIGTERM'd tasks resumed from their checkpoints.

Prints `ok`/`FAIL` per check, the figures (`figure: ...`) and `local-pods: N passed, M failed`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster as kube  # noqa: E402  (deploy/local/cluster.py)

SWEEP = "kube-smoke"
WORKER = "tsweep-worker"
COORDINATOR_POD = "tsweep-coordinator-1"
REDIS_POD = "tsweep-redis-0"


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}{': ' + detail if detail else ''}", flush=True)
        return ok


def sweep_file(directory: Path) -> Path:
    """3 models x 2 datasets x 2 learning rates of fake finetune cells (12 grid cells, then a
    final per model and dataset), 6 s each in 30 steps."""
    lines = [f'name = "{SWEEP}"', "max_attempts = 3", "allow_random_init = true", "",
             "[defaults]", "steps = 30", "batch_size = 8", "", "[fake]", "sleep_ms = 6000", "steps = 30", ""]
    for m in range(3):
        lines += ["[[models]]", f'name = "m{m}"', 'source = "builtin"', 'arch = "resnet18"',
                  f"imagenet_top1 = {70 + m}.0", "image_size = 32", ""]
    for d in range(2):
        lines += ["[[datasets]]", f'name = "d{d}"', 'format = "imagefolder"', f'path = "/shared/data/d{d}"',
                  'metric = "top1"', ""]
    lines += ["[regimes.finetune]", "lr = [0.001, 0.01]", "weight_decay = [0.0]", ""]
    path = directory / f"{SWEEP}.toml"
    path.write_text("\n".join(lines))
    return path


class Host:
    """The host's `tsweep` CLI against the coordinator Service."""

    def __init__(self, cli: str, url: str, token: str):
        self.cli, self.url, self.token = cli, url, token

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.cli, "--coordinator", self.url, "--token", self.token, *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise kube.ClusterError(f"tsweep {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def summary(self) -> dict[str, Any]:
        return json.loads(self.run("status", SWEEP, "--format", "json").stdout)

    def tasks(self) -> list[dict[str, Any]]:
        return json.loads(self.run("results", SWEEP, "--format", "json").stdout)


def prometheus(url: str) -> dict[str, float]:
    """The coordinator's /metrics (through its Service address), `name{labels}` -> value."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def stale_results(url: str) -> float:
    """Complete and fail reports refused by fencing since the coordinator process started
    (the sweep's `stale_reports` also counts the stale progress points that preemption leaves)."""
    samples = prometheus(url)
    return sum(samples.get(f'tsweep_stale_reports_total{{kind="{kind}"}}', 0.0) for kind in ("complete", "fail"))


def stale_metrics(url: str) -> int:
    return int(prometheus(url).get('tsweep_stale_reports_total{kind="metrics"}', 0.0))


def checkpoint_step(container: str, task_id: str, attempt: int) -> int | None:
    """The step of a fake-executor checkpoint on the shared volume (worker/src/fake.rs)."""
    path = f"/shared/checkpoints/{SWEEP}/{task_id}/attempt-{attempt}/fake-checkpoint.json"
    done = kube.podman("exec", container, "cat", path, check=False)
    try:
        return int(json.loads(done.stdout)["step"]) if done.returncode == 0 else None
    except (ValueError, KeyError):
        return None


def wait_for(what: str, timeout_s: float, probe: Callable[[], Any], every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except kube.ClusterError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise kube.ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def cluster_cli(state: Path, network: str, subnet: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(Path(kube.__file__)), "--state", str(state), "--network", network,
                           "--subnet", subnet, *args], capture_output=True, text=True, timeout=300, check=False)


def bad_input(checks: Checks, state: Path, network: str, subnet: str) -> None:
    """Each case: `up` of a broken copy exits 2 with a line that names what is wrong."""
    base_toml = (kube.REPO / "deploy/k8s/base/coordinator/coordinator.toml").read_text()
    cases = {
        "missing image": (
            "images:\n  - name: tsweep/coordinator\n    newTag: no-such-tag\n",
            {},
            ["image tsweep/coordinator:no-such-tag", "not in podman's store"],
        ),
        "missing Secret": (
            "patches:\n  - patch: |-\n      $patch: delete\n      apiVersion: v1\n      kind: Secret\n"
            "      metadata:\n        name: tsweep-auth\n",
            {},
            ["secret 'tsweep-auth' not found", "volume 'auth'"],
        ),
        "unknown key in the coordinator ConfigMap": (
            "configMapGenerator:\n  - name: tsweep-coordinator-config\n    behavior: replace\n"
            "    files:\n      - coordinator.toml\n",
            {"coordinator.toml": base_toml + "\nlease_ttl = 30000\n"},
            ["lease_ttl", "exited with code 2", "removed to end the loop"],
        ),
    }
    for name, (extra, files, wants) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            for file, text in files.items():
                (directory / file).write_text(text)
            (directory / "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n  - {os.path.relpath(kube.LOCAL, directory)}\n{extra}"
            )
            started = time.monotonic()
            done = cluster_cli(state, network, subnet, "up", "-k", str(directory))
            seconds = time.monotonic() - started
            errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
            text = done.stderr
            checks.check(f"bad input, {name}: exit 2 with one error line ({seconds:.1f} s)",
                         done.returncode == 2 and len(errors) == 1, f"exit {done.returncode}: {text.strip()[-600:]}")
            missing = [w for w in wants if w not in text]
            checks.check(f"bad input, {name}: the error names it", not missing, f"{missing} not in: {text[-600:]}")
            if "ConfigMap" in name:
                ctr = f"{COORDINATOR_POD}-coordinator"
                saved = state / "logs" / f"{ctr}.log"
                log = saved.read_text() if saved.exists() else ""
                checks.check(f"bad input, {name}: the pod's log (kept in {saved.parent}) has the error",
                             "unknown field `lease_ttl`" in log, log[-400:])
                time.sleep(2)
                checks.check(f"bad input, {name}: no crash loop left running",
                             kube.container_state(ctr) is None, str(kube.container_state(ctr)))
        cluster_cli(state, network, subnet, "down")


def main_run(checks: Checks, cli: str, state: Path, network: str, subnet: str) -> None:
    cluster = kube.Cluster(state, network, subnet)
    cluster.render()
    cluster.set_env([f"{WORKER}:TSWEEP_WORKER__EXECUTOR=fake"])
    plan = cluster.plan
    host_metrics = f"http://{plan.service_url('tsweep-coordinator', 'metrics')}/metrics"
    host = Host(cli, f"http://{plan.service_url('tsweep-coordinator', 'grpc')}",
                plan.secret_value("tsweep-auth", "token"))

    # Redis and the coordinator, the sweep from the host, then the workers.
    started = time.monotonic()
    cluster.up({WORKER: 0})
    control_plane_s = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        submitted = json.loads(host.run("submit", str(sweep_file(Path(tmp))), "--format", "json").stdout)
    checks.check("sweep submitted from the host CLI", submitted.get("sweep") == SWEEP, str(submitted))
    workers_started = time.monotonic()
    cluster.scale(WORKER, 2)

    def leased() -> bool:
        c = host.summary()["counts"]
        return c["leased"] + c["running"] + c["succeeded"] > 0

    wait_for("the first task leased", 120, leased, every_s=0.1)
    first_lease = time.monotonic()
    print(f"figure: kube play -> coordinator ready {control_plane_s:.1f} s; kube play -> first task leased "
          f"{first_lease - started:.1f} s (worker pods played -> first lease {first_lease - workers_started:.1f} s)",
          flush=True)

    probes = cluster.probe_all()
    failing = [p for p in probes if not p["ok"]]
    kinds = sorted({f"{p['pod'].rsplit('-', 1)[0]}/{p['kind']}" for p in probes})
    checks.check(f"every probe answers ({len(probes)}: {', '.join(kinds)})", bool(probes) and not failing,
                 json.dumps(failing))

    wait_for("both workers running tasks", 120, lambda: host.summary()["counts"]["running"] >= 2)

    # Scale up: a third worker pod leases work.
    play_started = time.monotonic()
    cluster.scale(WORKER, 3)
    wait_for("tsweep-worker-3 to lease a task", 120,
             lambda: any((t["worker"] or "").startswith("tsweep-worker-3-") for t in host.tasks()))
    print(f"figure: scale-up, worker pod played -> its first lease {time.monotonic() - play_started:.1f} s",
          flush=True)
    checks.check("scaled up to 3 worker pods", len(cluster.running_pods(WORKER)) == 3)

    # Delete a worker pod: SIGTERM, the grace period, its task checkpoints and moves on. The
    # pod and the moment are chosen from the checkpoint on the shared volume (the
    # coordinator hears of checkpoints only with the heartbeat): mid-run, seconds of work left.
    def mid_run() -> tuple[str, dict[str, int]] | None:
        for t in host.tasks():
            pod = (t["worker"] or "").rsplit("-", 1)[0]
            if t["state"] != "running" or not pod.startswith(WORKER + "-"):
                continue
            step = checkpoint_step(f"{pod}-worker", t["task_id"], t["attempt"])
            if step is not None and 3 <= step <= 20:
                return pod, {t["task_id"]: step}
        return None

    victim, preempted = wait_for("a worker pod to be mid-run", 90, mid_run, every_s=0.1)
    stopped = cluster.stop(victim)
    checks.check(f"SIGTERM'd worker pod {victim} exited 0 within its grace period ({stopped['seconds']:.1f} s of "
                 f"{stopped['grace_s']} s)", stopped["exit_codes"].get("worker") == 0
                 and stopped["seconds"] < stopped["grace_s"], json.dumps(stopped))

    # SIGKILL the coordinator's process: podman restarts the container; nothing is re-run.
    before = host.summary()
    running = {t["task_id"]: t["attempt"] for t in host.tasks() if t["state"] in ("leased", "running")}
    back_s = cluster.kill(COORDINATOR_POD, "coordinator")
    print(f"figure: coordinator container SIGKILLed -> restarted and ready {back_s:.1f} s", flush=True)

    def settled() -> list[dict[str, Any]] | None:
        tasks = {t["task_id"]: t for t in host.tasks()}
        if all(tasks[i]["state"] == "succeeded" for i in running):
            return list(tasks.values())
        return None

    after_kill = wait_for("the tasks running at the coordinator's kill to finish", 120, settled)
    rerun = {t["task_id"]: (running[t["task_id"]], t["attempt"]) for t in after_kill
             if t["task_id"] in running and t["attempt"] != running[t["task_id"]]}
    after = host.summary()
    checks.check(f"killed coordinator cost nothing: {len(running)} in-flight tasks finished on the same attempt",
                 bool(running) and not rerun, f"re-run: {rerun}")
    stale = stale_results(host_metrics)
    checks.check("killed coordinator cost nothing: no lease expired, no result or failure report refused",
                 after["lease_expiries"] == before["lease_expiries"] == 0 and stale == 0,
                 f"lease expiries {before['lease_expiries']} -> {after['lease_expiries']}, stale reports {stale}")

    # Redis: delete its pod (SIGTERM: the AOF is flushed) and play it again on its claim.
    before_redis = {t["task_id"]: t for t in host.tasks()}
    redis_stop = cluster.stop(REDIS_POD)
    coordinator = [p for p in cluster.probe_all([COORDINATOR_POD])]
    live = [p for p in coordinator if p["kind"] == "liveness"]
    checks.check("Redis away: the coordinator's liveness still SERVING", bool(live) and all(p["ok"] for p in live),
                 json.dumps(live))
    not_ready = wait_for("the coordinator's readiness to turn NOT_SERVING", 15, lambda: [
        p for p in cluster.probe_all([COORDINATOR_POD]) if p["kind"] == "readiness" and not p["ok"]])
    checks.check("Redis away: the coordinator's readiness NOT_SERVING", bool(not_ready), json.dumps(not_ready))
    redis_back_s = cluster.play(cluster.pod_plan(REDIS_POD))
    wait_for("the coordinator to be ready again", 60, lambda: all(
        p["ok"] for p in cluster.probe_all([COORDINATOR_POD]) if p["kind"] == "readiness"))
    after_redis = {t["task_id"]: t for t in host.tasks()}
    print(f"figure: Redis pod deleted ({redis_stop['seconds']:.1f} s) and played again on its claim "
          f"({redis_back_s:.1f} s)", flush=True)
    lost = [i for i, t in before_redis.items() if i not in after_redis
            or (t["state"] == "succeeded" and after_redis[i]["result"] != t["result"])]
    checks.check(f"Redis restarted on its volume: all {len(before_redis)} cells and their results still there",
                 bool(before_redis) and not lost, f"lost or changed: {lost}")
    aof = kube.podman("exec", f"{REDIS_POD}-redis", "ls", "/data/appendonlydir", check=False)
    checks.check("Redis' AOF is on its claim (/data/appendonlydir)", ".aof" in aof.stdout, aof.stdout + aof.stderr)

    # Scale down to one worker: the drained pods' tasks resume on the last one.
    drained = cluster.scale(WORKER, 1)
    checks.check(f"scaled down to 1 worker pod ({len(drained)} drained, exit 0)",
                 len(cluster.running_pods(WORKER)) == 1 and all(d["exit_codes"].get("worker") == 0 for d in drained),
                 json.dumps(drained))

    def done() -> dict[str, Any] | None:
        summary = host.summary()
        return summary if summary["status"] == "done" else None

    wait_for("the sweep to be done", 300, done, every_s=1.0)
    time.sleep(3)  # finals are scheduled right after the grid: done must stay done
    final = wait_for("the sweep to be done", 300, done, every_s=1.0)
    tasks = host.tasks()
    print(f"figure: sweep {SWEEP}: {len(tasks)} cells done {time.monotonic() - started:.1f} s after the first "
          "kube play", flush=True)

    # Every cell succeeded exactly once.
    checks.check(f"every cell succeeded ({len(tasks)} of {final['counts']['total']})",
                 bool(tasks) and all(t["state"] == "succeeded" for t in tasks)
                 and len(tasks) == final["counts"]["total"],
                 json.dumps([t for t in tasks if t["state"] != "succeeded"])[:600])
    keys = [f"tsweep:{{{SWEEP}}}:task:{t['task_id']}" for t in tasks]
    script = "local r = {} for i, k in ipairs(KEYS) do r[i] = redis.call('HGET', k, 'accepted') end return r"
    accepted = kube.podman("exec", f"{REDIS_POD}-redis", "redis-cli", "EVAL", script, str(len(keys)), *keys,
                           check=False).stdout.split()
    checks.check("every cell's result accepted exactly once (Redis `accepted` = 1)",
                 len(accepted) == len(tasks) and all(a == "1" for a in accepted), " ".join(accepted))
    checks.check("no retry budget spent (preempted attempts do not count)",
                 all(t["retries_used"] == 0 for t in tasks),
                 json.dumps({t["task_id"]: t["retries_used"] for t in tasks if t["retries_used"]}))
    stale = stale_results(host_metrics)
    checks.check(f"no lease expired and no result or failure report refused over the whole run ({stale_metrics(host_metrics)} "
                 "progress points of preempted attempts dropped, as designed)",
                 final["lease_expiries"] == 0 and stale == 0, f"{json.dumps(final)}, stale reports {stale}")
    by_id = {t["task_id"]: t for t in tasks}
    resumed = {i: (by_id[i]["result"] or {}).get("resumed_from_step", 0) for i in preempted}
    checks.check(f"the SIGTERM'd pod's task resumed from its checkpoint on another pod "
                 f"(checkpoint at step {list(preempted.values())}, resumed_from_step {list(resumed.values())})",
                 all(resumed[i] >= step > 0 and by_id[i]["attempt"] >= 2
                     and not (by_id[i]["worker"] or "").startswith(victim + "-") for i, step in preempted.items()),
                 json.dumps({i: by_id[i] for i in preempted})[:800])
    # The pod that ran each resumed attempt logged it (running, or its log kept at deletion).
    for task_id in preempted:
        pod = (by_id[task_id]["worker"] or "").rsplit("-", 1)[0]
        saved = state / "logs" / f"{pod}-worker.log"
        log = kube.container_log(f"{pod}-worker", 100000) if pod in cluster.running_pods() else (
            saved.read_text() if saved.exists() else "")
        resumed_lines = [line for line in log.splitlines() if "resuming from checkpoint" in line and task_id in line]
        checks.check(f"{pod} logged the resume of {task_id[:8]}", bool(resumed_lines), log[-300:])
    probes = cluster.probe_all()
    checks.check("every probe answers at the end", bool(probes) and all(p["ok"] for p in probes),
                 json.dumps([p for p in probes if not p["ok"]]))


def bench(cli: str, state: Path, network: str, subnet: str, rounds: int) -> None:
    """`--bench N`: N times from nothing to the first task leased, with medians (BENCHMARKS.md)."""
    samples: dict[str, list[float]] = {"control plane ready": [], "first task leased": [], "workers -> lease": []}
    for _ in range(rounds):
        cluster = kube.Cluster(state, network, subnet)
        cluster.render()
        cluster.set_env([f"{WORKER}:TSWEEP_WORKER__EXECUTOR=fake"])
        host = Host(cli, f"http://{cluster.plan.service_url('tsweep-coordinator', 'grpc')}",
                    cluster.plan.secret_value("tsweep-auth", "token"))
        started = time.monotonic()
        cluster.up({WORKER: 0})
        samples["control plane ready"].append(time.monotonic() - started)
        with tempfile.TemporaryDirectory() as tmp:
            host.run("submit", str(sweep_file(Path(tmp))))
        workers = time.monotonic()
        cluster.scale(WORKER, 2)
        wait_for("the first task leased", 120, lambda: sum(
            host.summary()["counts"][k] for k in ("leased", "running", "succeeded")) > 0, every_s=0.05)
        samples["first task leased"].append(time.monotonic() - started)
        samples["workers -> lease"].append(time.monotonic() - workers)
        cluster_cli(state, network, subnet, "down")
    for name, values in samples.items():
        values.sort()
        print(f"figure: bench {name}: median {values[len(values) // 2]:.1f} s over {rounds} "
              f"(min {values[0]:.1f}, max {values[-1]:.1f})", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cli", required=True, help="the host's tsweep binary")
    parser.add_argument("--state", type=Path, default=kube.TSWEEP_CACHE / "local-cluster-e2e")
    parser.add_argument("--network", default="tsweep-local-e2e")
    parser.add_argument("--subnet", default="10.89.43.0/24")
    parser.add_argument("--bench", type=int, metavar="N", help="only measure kube play -> first lease, N times")
    parser.add_argument("--only", choices=["bad-input", "sweep"], help="run one part")
    args = parser.parse_args(argv)
    if args.bench:
        cluster_cli(args.state, args.network, args.subnet, "down")
        bench(args.cli, args.state, args.network, args.subnet, args.bench)
        return 0
    checks = Checks()
    started = time.monotonic()
    cluster = kube.Cluster(args.state, args.network, args.subnet)
    cluster_cli(args.state, args.network, args.subnet, "down")  # leftovers of an interrupted run
    try:
        if args.only in (None, "bad-input"):
            bad_input(checks, args.state, args.network, args.subnet)
        if args.only in (None, "sweep"):
            main_run(checks, args.cli, args.state, args.network, args.subnet)
    except kube.ClusterError as e:
        checks.check("the run went to its end", False, str(e))
        for row in cluster.status() if cluster.rendered_path.exists() else []:
            print(f"     {json.dumps(row)}")
        for name in cluster.running_pods() if cluster.rendered_path.exists() else []:
            for container in cluster.pod_plan(name).containers:
                print(f"     --- {name}/{container}\n{kube.container_log(f'{name}-{container}', 15)}")
    finally:
        cluster_cli(args.state, args.network, args.subnet, "down")
    print(f"figure: bad input, the sweep and teardown in {time.monotonic() - started:.0f} s", flush=True)
    print(f"local-pods: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
