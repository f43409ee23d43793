"""Every file in launch/ and configs/ loads and is consistent (keys, resource names, TPU topologies,
referenced paths), since cluster launches cannot run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from jaxvalues.distributed.resources import WorkerResources

ROOT = Path(__file__).resolve().parents[1]
LAUNCH, CONFIGS = ROOT / "launch", ROOT / "configs"
RAY_RESOURCES = {"CPU", "GPU", "TPU", "memory", "object_store_memory"}
K8S_RESOURCES = {"cpu", "memory", "ephemeral-storage", "nvidia.com/gpu", "google.com/tpu"}


def _kind(path: Path) -> str:
    if path.name == "entry.py":
        return "entry"
    if path.name.startswith("cluster-") and path.suffix == ".yaml":
        return "launcher"
    if path.name.startswith("kuberay-") and path.suffix == ".yaml":
        return "kuberay"
    if path.name.startswith("resources-") and path.suffix == ".yaml":
        return "resources"
    return "unknown"


LAUNCH_FILES = sorted(p for p in LAUNCH.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
CONFIG_FILES = sorted(p for p in CONFIGS.rglob("*") if p.is_file())


def _load(path: Path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and raw, f"{path}: expected a non-empty mapping"
    return raw


def _referenced_paths(path: Path):
    """Repository paths mentioned in a file's text (launch/..., configs/...)."""
    return sorted(set(re.findall(r"\b((?:launch|configs)/[\w./-]+\.(?:ya?ml|py))", path.read_text())))


def _tpu_hosts(accelerator: str, topology: str) -> tuple[int, int]:
    """(hosts per slice, chips per host) from Ray's own TPU tables."""
    from ray.util.tpu import get_tpu_worker_resources

    hosts, res = get_tpu_worker_resources(topology, accelerator)
    return hosts, int(res["TPU"])


def test_launch_and_configs_hold_only_checked_kinds():
    assert LAUNCH_FILES and CONFIG_FILES
    assert [p.name for p in LAUNCH_FILES if _kind(p) == "unknown"] == []
    assert {_kind(p) for p in LAUNCH_FILES} == {"entry", "launcher", "kuberay", "resources"}
    assert [p for p in CONFIG_FILES if p.suffix not in (".yaml", ".yml")] == []


@pytest.mark.parametrize("path", LAUNCH_FILES + CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_referenced_repository_paths_exist(path):
    for ref in _referenced_paths(path):
        assert (ROOT / ref).exists(), f"{path.name} mentions {ref}, which does not exist"


@pytest.mark.parametrize("path", [p for p in LAUNCH_FILES if _kind(p) == "launcher"], ids=lambda p: p.name)
def test_cluster_launcher_config(path):
    cfg = _load(path)
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "setup_commands", "file_mounts"):
        assert key in cfg, f"{path.name}: missing {key}"
    prov = cfg["provider"]
    assert prov["type"] == "gcp" and {"region", "availability_zone", "project_id"} <= set(prov)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0  # the head runs the driver only
    assert any("pip install -e" in c and "jaxvalues" in c for c in cfg["setup_commands"])
    assert "." in cfg["file_mounts"].values()
    workers = 0
    for name, t in types.items():
        assert set(t["resources"]) <= RAY_RESOURCES, f"{name}: unknown resource names {set(t['resources'])}"
        assert 0 <= t.get("min_workers", 0) <= t.get("max_workers", 0) <= cfg["max_workers"]
        nc = t["node_config"]
        if name == cfg["head_node_type"]:
            assert "machineType" in nc
            continue
        workers += t["max_workers"]
        if "acceleratorType" in nc or "acceleratorConfig" in nc:  # a TPU VM host
            assert "runtimeVersion" in nc and "machineType" not in nc
            version, count = nc["acceleratorType"].split("-")
            chips = int(count) // 2 if version in ("v2", "v3", "v4", "v5p") else int(count)  # TensorCores
            per_host = t["resources"]["TPU"]
            assert per_host in (4, 8) and chips % per_host == 0
            hosts = chips // per_host
            assert t["max_workers"] % hosts == 0 and t["min_workers"] % hosts == 0, "whole slices only"
            assert any("jax[tpu]" in c for c in cfg.get("worker_setup_commands", []))
        else:  # a GPU VM
            acc = nc["guestAccelerators"]
            assert all(a["acceleratorType"].startswith("nvidia-") for a in acc)
            assert sum(a["acceleratorCount"] for a in acc) == t["resources"]["GPU"]
            assert any("jax[cuda" in c for c in cfg.get("worker_setup_commands", []))
    assert workers <= cfg["max_workers"]


@pytest.mark.parametrize("path", [p for p in LAUNCH_FILES if _kind(p) == "kuberay"], ids=lambda p: p.name)
def test_kuberay_raycluster_manifest(path):
    import ray

    cfg = _load(path)
    assert cfg["apiVersion"] == "ray.io/v1" and cfg["kind"] == "RayCluster" and cfg["metadata"]["name"]
    spec = cfg["spec"]
    assert spec["rayVersion"] == ray.__version__  # the image must match the Ray the driver uses
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (hc,) = head["template"]["spec"]["containers"]
    assert {p["containerPort"] for p in hc["ports"]} >= {6379, 8265, 10001}
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    kinds = set()
    for g in groups + [{"groupName": "head", "template": head["template"], "numOfHosts": 1}]:
        (c,) = g["template"]["spec"]["containers"]
        lim, req = c["resources"]["limits"], c["resources"]["requests"]
        assert lim == req, f"{g['groupName']}: limits and requests differ"
        assert set(lim) <= K8S_RESOURCES, f"{g['groupName']}: unknown resource names {set(lim)}"
        assert c["image"] == hc["image"]
        if g["groupName"] == "head":
            continue
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        sel = g["template"]["spec"].get("nodeSelector", {})
        if "google.com/tpu" in lim:
            kinds.add("tpu")
            version = sel["cloud.google.com/gke-tpu-accelerator"].removeprefix("tpu-").removesuffix("-slice")
            hosts, chips = _tpu_hosts(version, sel["cloud.google.com/gke-tpu-topology"])
            assert g["numOfHosts"] == hosts and int(lim["google.com/tpu"]) == chips
        elif "nvidia.com/gpu" in lim:
            kinds.add("gpu")
            assert g["numOfHosts"] == 1 and "cloud.google.com/gke-accelerator" in sel
    assert kinds == {"gpu", "tpu"}


@pytest.mark.parametrize("path", [p for p in LAUNCH_FILES if _kind(p) == "resources"], ids=lambda p: p.name)
def test_worker_resources_file(path):
    raw = _load(path)
    res = WorkerResources.from_config(raw["resources"], str(path))
    assert res.accelerator in ("gpu", "tpu")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in res.env.items())
    opts = res.actor_options()
    assert opts["num_gpus"] == res.num_gpus and opts.get("resources", {}).get("TPU", 0) == res.tpus


def test_entry_point(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("jaxvalues_launch_entry", LAUNCH / "entry.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    assert entry.main([]) == 1 and "ray job submit" in capsys.readouterr().err
    assert entry._with_ray(["sweep", "--spec", "x"])[-2:] == ["--ray", "auto"]
    assert entry._with_ray(["sweep", "--ray", "local"]) == ["sweep", "--ray", "local"]
    with pytest.raises(SystemExit) as e:
        entry.main(["tpu-sweep", "--help"])
    assert e.value.code == 0
    # a dry run parses the spec and the output directory without contacting a cluster
    example = str(CONFIGS / "sweeps" / "example.yaml")
    assert entry.main(["sweep", "--spec", example, "--out", str(tmp_path), "--dry-run", "--json"]) == 0
    assert '"pending": 960' in capsys.readouterr().out
    for cmd in re.findall(r"entry\.py ([A-Za-z-]+)", "\n".join(p.read_text() for p in LAUNCH_FILES + CONFIG_FILES)):
        assert cmd in entry.COMMANDS or cmd == "COMMAND", cmd


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_file(path):
    raw = _load(path)
    if path.parent.name == "sweeps":
        from jaxvalues.distributed.spec import load_spec

        spec = load_spec(path)
        assert spec.conditions() and spec.resources().validate() is None
        assert set(raw) <= {"name", "models", "dtype", "data", "statistics", "selection", "evaluation", "grid",
                            "workers"}
    elif path.parent.name == "models":
        assert "model" in raw
