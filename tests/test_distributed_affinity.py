"""CPU worker pinning: node-local core slots held with flock, and thread affinity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxvalues.distributed.affinity import available_cores, claim_slot
from jaxvalues.distributed.resources import WorkerResources
from jaxvalues.errors import ConfigError


def test_slots_are_disjoint_and_freed_when_released(tmp_path):
    cores = available_cores()
    first, h1 = claim_slot(1, tmp_path)
    assert first == cores[:1]
    second, h2 = claim_slot(1, tmp_path)
    if len(cores) >= 2:
        assert second == cores[1:2]
    else:
        assert second is None and h2 is None
    too_big, h3 = claim_slot(len(cores) + 1, tmp_path)  # no slot of that many cores exists
    assert too_big is None and h3 is None
    h1.close()  # slot 0 free again (as when a worker process dies)
    again, h4 = claim_slot(1, tmp_path)
    assert again == cores[:1]
    for h in (h2, h4):
        if h is not None:
            h.close()
    with pytest.raises(ValueError, match="cores_per_worker"):
        claim_slot(0, tmp_path)


def test_a_slot_held_by_another_process_is_skipped(tmp_path):
    if len(available_cores()) < 2:
        pytest.skip("needs 2 cores")
    code = ("import sys, time; from jaxvalues.distributed.affinity import claim_slot; "
            f"c, h = claim_slot(1, {str(tmp_path)!r}); print(c, flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == str(available_cores()[:1])
        cores, h = claim_slot(1, tmp_path)
        assert cores == available_cores()[1:2]
        h.close()
    finally:
        holder.communicate("")
    cores, h = claim_slot(1, tmp_path)  # the holder exited: its slot is free
    assert cores == available_cores()[:1]
    h.close()


def test_pin_threads_confines_existing_and_new_threads():
    """In a subprocess (never pin the test process): threads started before and after pinning."""
    core = available_cores()[-1]
    code = f"""
import os, threading
from jaxvalues.distributed.affinity import pin_threads
ev = threading.Event()
t = threading.Thread(target=ev.wait); t.start()
n = pin_threads([{core}])
seen = {{}}
def probe(): seen['new'] = sorted(os.sched_getaffinity(0))
u = threading.Thread(target=probe); u.start(); u.join()
print(n >= 2, sorted(os.sched_getaffinity(t.native_id)), sorted(os.sched_getaffinity(0)), seen['new'])
ev.set(); t.join()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert out[0] == "True"
    assert out[1].strip() == f"[{core}] [{core}] [{core}]"


def test_pinning_defaults_and_config():
    assert WorkerResources().pinned_cores() == 1
    assert WorkerResources(num_cpus=4).pinned_cores() == 4
    assert WorkerResources(num_cpus=0.5, threads=1).pinned_cores() == 1
    assert WorkerResources(num_cpus=2, pin_cpus=False).pinned_cores() is None
    assert WorkerResources(num_gpus=1).pinned_cores() is None  # accelerators keep XLA's defaults
    assert WorkerResources.from_config({"pin_cpus": True, "num_gpus": 1, "num_cpus": 8}).pinned_cores() == 8
    with pytest.raises(ConfigError, match=r"resources.pin_cpus must be true, false or null, got 'yes'"):
        WorkerResources.from_config({"pin_cpus": "yes"})
