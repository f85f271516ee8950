"""Freed memory kept for reuse: a training step's large blocks are not mapped again page by page."""

import json
import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# A training step's pattern: a 64 MB block (a batch's logits), a 36 MB one, small tensors between them, then a
# second 64 MB block (their gradient) while the first is gone; the page faults a step costs, and memory held.
CHURN = """
import json, resource
import torch
from scratchlm.allocator import kept_freed_memory

def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024

def faults_per_step(steps=12):
    faults = []
    for i in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        logits = torch.ones(16 * 1024 * 1024)
        small = [torch.ones(i % 7 + 1) for _ in range(50)]
        other = torch.ones(9 * 1024 * 1024)
        del logits
        grad = torch.ones(16 * 1024 * 1024)
        del other, grad, small
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sum(faults[4:]) / len(faults[4:])  # a step's average once the first steps have grown the heap

plain = faults_per_step()
with kept_freed_memory():
    kept = faults_per_step()
    rss_inside = rss_mb()
print(json.dumps({"plain": plain, "kept": kept, "rss_inside": rss_inside, "rss_after": rss_mb()}))
"""


def _faults(env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@glibc_only
def test_a_training_steps_large_blocks_are_reused_without_page_faults():
    f = _faults()
    pages = 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    assert f["plain"] > pages, f  # by default glibc maps each 64 MB block afresh, every step
    assert f["kept"] < f["plain"] / 20, f  # inside, a step reuses the heap's pages
    # Afterwards the heap's kept memory goes back to the system: a library call holds nothing for good.
    # A step's peak is the 64 MB and 36 MB blocks together; at least the larger must be returned.
    assert f["rss_inside"] - f["rss_after"] >= 64, f


@glibc_only
def test_a_users_own_malloc_settings_are_left_alone():
    f = _faults({"MALLOC_ARENA_MAX": "2"})
    assert f["kept"] > 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE"), f
