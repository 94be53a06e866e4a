"""The cluster path: a `ray up` rehearsal on this machine (Ray's fake multi-node autoscaler,
`cluster/laptop.yaml`) and `cluster.yaml` checked offline (Ray's validator, what its setup
commands install into the image's Python, the per-node data fetch)."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent          # the venv: `ray`, `regimes` and the Python every fake node runs
STUDY = "cluster/rehearsal_digits.yaml"


# --- the fake multi-node cluster -------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> set[int]:
    """Every live process of session `sid` (the `ray start` we began with setsid): Ray starts its
    GCS, raylets, dashboard, autoscaler, the fake worker nodes and their workers without a new session."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()       # after "pid (comm) "
        if int(fields[3]) == sid and fields[0] != "Z":     # field 6: session id; skip zombies
            pids.add(int(entry.name))
    return pids


def _pids_mentioning(text: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def _end_session(sid: int) -> set[int]:
    """SIGTERM, then SIGKILL, every process of the session; returns those still alive (none)."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _session_pids(sid):
            break
    return _session_pids(sid)


def _alive_nodes(dashboard: str, token: str) -> list[dict]:
    req = urllib.request.Request(f"{dashboard}/api/v0/nodes?limit=100",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        nodes = json.load(r)["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fake_cluster_autoscales_a_submitted_study(tmp_path):
    """`ray start --head` with the fake multi-node provider and no workers, then the README's
    `ray job submit --working-dir . -- regimes sweep ... --address auto`: the trials (1 CPU each,
    the head has none) wait until the autoscaler adds worker nodes, and the study finishes with
    every trial and epoch in Parquet. Everything started is ended by its session id."""
    pytest.importorskip("ray")
    missing = [m for m in ("aiohttp", "aiohttp_cors", "opencensus", "prometheus_client")
               if __import__("importlib").util.find_spec(m) is None]
    assert not missing, f"`ray job submit` needs the dashboard (pip install 'ray[default]'): missing {missing}"
    from ray._private.services import get_node_ip_address

    started = time.monotonic()
    gcs, client, dash, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rgfc-", dir="/tmp")     # short: Ray puts sockets under it
    config = yaml.safe_load((ROOT / "cluster" / "laptop.yaml").read_text())
    config["provider"]["gcs_address"] = f"{get_node_ip_address()}:{gcs}"
    config_path = tmp_path / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    storage = tmp_path / "results"
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "cluster"), env.get("PYTHONPATH")]))
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=pythonpath, RAY_FAKE_CLUSTER="1",
               AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)     # this cluster's own token
    dashboard = f"http://127.0.0.1:{dash}"
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "0", "--num-gpus", "0",
         f"--autoscaling-config={config_path}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         f"--port={gcs}", f"--ray-client-server-port={client}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
         "--object-store-memory=200000000"],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    sid = head.pid                                   # setsid: the session id is the leader's pid
    peak, status = [], ""
    try:
        deadline = time.monotonic() + 90
        while True:                                   # the head, alone
            try:
                nodes = _alive_nodes(dashboard, token)
                if nodes:
                    break
            except OSError:
                pass
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not come up in 90 s"
            time.sleep(1)
        assert len(nodes) == 1, nodes                 # zero workers to begin with
        print(f"\nhead up after {time.monotonic() - started:.0f} s: 1 node, 0 CPUs")

        job = subprocess.Popen(
            [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
             "regimes", "sweep", STUDY, "--address", "auto", "--storage", str(storage)],
            cwd=ROOT, env=env, stdout=open(tmp_path / "job.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while job.poll() is None:
            assert time.monotonic() < deadline, "the study did not finish in 300 s"
            try:
                n = len(_alive_nodes(dashboard, token))
            except OSError:
                n = 0
            if n > max(peak, default=0):
                status = subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"],
                                        env=env, capture_output=True, text=True, timeout=60).stdout
                print(f"{time.monotonic() - started:.0f} s: {n} nodes alive")
            peak.append(n)
            time.sleep(1)
        log = (tmp_path / "job.log").read_text()
        assert job.returncode == 0, log[-4000:]
    finally:                                          # (temp_dir is kept on a failure: Ray's logs)
        left = _end_session(sid)
        stray = _pids_mentioning(temp_dir)
    try:
        print(status)
        print("\n".join(log.splitlines()[-8:]))

        assert not left and not stray, f"left running: session {sorted(left)}, using {temp_dir}: {sorted(stray)}"
        shipped = [d for d in Path(temp_dir).glob("session_2*/runtime_resources*/working_dir_files/_ray_pkg_*")
                   if d.is_dir()]                 # one unpacked copy per node: the head's and each worker's
        assert len(shipped) >= 2 and all((d / "regimes" / "cli.py").is_file() for d in shipped)
        for d in shipped:            # the upload left out what .gitignore lists, and .git
            assert not {".venv", ".git", "results", "runs", "data"} & {p.name for p in d.iterdir()}
        assert max(peak) >= 2, f"the autoscaler added no worker (alive nodes seen: {sorted(set(peak))})"
        assert "worker.cpu" in status
        study = storage / "rehearsal-digits"
        trials = pq.read_table(study / "trials.parquet").to_pandas()
        epochs = pq.read_table(study / "epochs").to_pandas()
        assert len(trials) == 3 and set(trials["status"]) <= {"completed", "diverged"}, trials
        assert sorted(trials["elr"]) == [1e-3, 1e-2, 1e-1]
        counts = epochs.groupby("trial_id", observed=True)["epoch"].agg(["count", "nunique", "min", "max"])
        assert set(counts.index.astype(str)) == set(trials["trial_id"].astype(str))     # every trial
        assert (counts["count"] == 2).all() and (counts["nunique"] == 2).all(), counts   # each epoch once
        print(f"{len(trials)} trials x {int(counts['count'].iloc[0])} epochs in Parquet; peak "
              f"{max(peak)} nodes; wall {time.monotonic() - started:.0f} s; no process left")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


# --- cluster.yaml, offline ---------------------------------------------------------------------
def _cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "cluster" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _pip_installs(raw) -> list[str]:
    commands = raw["setup_commands"] + raw["head_setup_commands"] + raw["worker_setup_commands"]
    return [c for c in commands if "pip install" in c]


def test_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _cluster()
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))                 # CPU head
    assert head["resources"] == {"CPU": 0}                                                # driver only
    assert "--num-cpus=0" in " ".join(raw["head_start_ray_commands"])
    for w in workers:
        assert w["node_config"]["InstanceType"].startswith(("g", "p"))                    # GPU workers
        assert w["min_workers"] == 0 and w["max_workers"] > 0                             # autoscaling
        assert w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert w["node_config"]["IamInstanceProfile"]                                     # S3 checkpoints
    for t in types.values():                                   # no fallback to Ray's old default AMI
        assert t["node_config"]["ImageId"].startswith(("ami-", "resolve:ssm:/aws/service/deeplearning/"))
    assert 5 <= raw["idle_timeout_minutes"] <= 60
    assert raw["provider"]["cache_stopped_nodes"] is False
    assert "--gpus all" in raw["docker"]["worker_run_options"] and not raw["docker"]["head_run_options"]
    assert "CHANGE" in (ROOT / "cluster.yaml").read_text()


def test_rays_validator_rejects_a_broken_cluster_yaml():
    """The test above is only worth something if the validator catches mistakes."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _cluster()
    raw["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(raw))


def test_cluster_setup_installs_this_package_into_the_images_python():
    """What can be checked without AWS: the image tag, the Python its setup commands use, and
    that everything they install is pinned, to versions that satisfy this package."""
    import ray
    import tomllib
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    raw = _cluster()
    image = raw["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu\d+)", image)
    assert m, f"{image}: a release tag with Python and CUDA, not latest/nightly"
    ray_version, python = m.group(1), f"3.{m.group(2)}"
    pins = _constraints()
    assert pins["ray"] == ray_version == ray.__version__          # image, pins and the `ray up` client
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert python in SpecifierSet(project["requires-python"])
    # the pins are for the image's Python (they were made on it: its wheels, its markers)
    made_for = re.search(r"\(Python (3\.\d+), Linux x86_64\)", (ROOT / "cluster" / "constraints.txt").read_text())
    assert made_for.group(1) == python

    # Ray's images keep their Python in /home/ray/anaconda3 (Ray's own fake docker nodes assume it)
    image_python = "/home/ray/anaconda3/bin/python"
    from ray.autoscaler._private.fake_multi_node import node_provider

    assert "/home/ray/anaconda3/lib/python" in Path(node_provider.__file__).read_text()
    mounts = {target: (ROOT / source).resolve() for target, source in raw["file_mounts"].items()}
    repo = next(t for t, s in mounts.items() if s == ROOT)
    installs = _pip_installs(raw)
    assert installs and all(c.startswith(f"{image_python} -m pip install ") for c in installs)
    package = next(c for c in installs if f'"{repo}[dashboard]"' in c)       # this package, from the mount
    assert f"-c {repo}/cluster/constraints.txt" in package
    assert f'"ray[default,tune]=={ray_version}"' in package
    for c in installs:        # no unpinned install: every one under the constraints, naming pinned packages
        assert f"-c {repo}/cluster/constraints.txt" in c, c
        args = c.split("#")[0].split("pip install", 1)[1].split()
        named = [a.strip('"') for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "-c"]
        for req in (Requirement(r) for r in named if not r.startswith("/")):   # by name, not this repo's folder
            assert str(req.specifier) == f"=={pins.get(canonicalize_name(req.name))}", c

    # every requirement of the package (and its dashboard extra) pinned, to a version it allows
    for r in project["dependencies"] + project["optional-dependencies"]["dashboard"]:
        req = Requirement(r)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not in cluster/constraints.txt"
        assert pins[name] in req.specifier, f"{name}=={pins[name]} does not satisfy {req}"
    for name in ("torch", "torchvision", "nvidia-cuda-runtime"):
        assert name in pins
    assert int(pins["nvidia-cuda-runtime"].split(".")[0]) == 13     # CUDA 13: host driver >= 580
    assert "driver >= 580" in (ROOT / "cluster.yaml").read_text()
    assert {".venv", ".git", "results", "data"} <= set(raw["rsync_exclude"])


def test_cluster_data_root_is_the_studies_and_holds_both_cifars():
    from regimes.core.data import CIFAR_LAYOUT

    raw = _cluster()
    bases = [yaml.safe_load(p.read_text())["base"] for p in (ROOT / "studies").glob("*.yaml")]
    roots = {b["data_root"] for b in bases if str(b.get("dataset", "")).startswith("cifar") and "data_root" in b}
    assert len(roots) == 1                    # the cluster's CIFAR studies read one folder
    root = roots.pop()
    assert f"-v {root}:{root}" in raw["docker"]["run_options"]       # the host's disk, seen in the container
    assert any(root in c for c in raw["initialization_commands"])
    fetch = next(c for c in raw["setup_commands"] if "fetch_cifar.sh" in c)
    assert fetch.split()[-2:] == [root, "/home/ray/anaconda3/bin/python"]
    script = (ROOT / "cluster" / "fetch_cifar.sh").read_text()
    for name, (folder, *_rest) in CIFAR_LAYOUT.items():
        assert f"{name}:{folder}" in script


def test_fetch_cifar_runs_once_per_node_under_a_lock(tmp_path):
    """Two setups at once on one node (or a rerun of `ray up`): each dataset is fetched once."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"                # stands in for the image's Python with torchvision
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\necho \"$3\" >> {log}\nsleep 1\n"   # python - ROOT NAME
                    "case $3 in cifar10) mkdir -p \"$2/cifar-10-batches-py\";; "
                    "*) mkdir -p \"$2/cifar-100-python\";; esac\n")
    fake.chmod(0o755)
    root = tmp_path / "data"
    script = str(ROOT / "cluster" / "fetch_cifar.sh")
    runs = [subprocess.Popen(["sh", script, str(root), str(fake)]) for _ in range(2)]
    assert [r.wait(timeout=60) for r in runs] == [0, 0]
    assert log.read_text().split() == ["cifar10", "cifar100"]
    assert subprocess.run(["sh", script, str(root), str(fake)], timeout=60).returncode == 0
    assert log.read_text().split() == ["cifar10", "cifar100"]        # done: not fetched again
    assert (root / "cifar-10-batches-py").is_dir() and (root / "cifar-100-python").is_dir()

    failing = tmp_path / "failing"             # a failed download leaves no mark: the next run retries
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    assert subprocess.run(["sh", script, str(tmp_path / "other"), str(failing)], timeout=60).returncode != 0
    assert not list((tmp_path / "other").glob(".*.done"))
