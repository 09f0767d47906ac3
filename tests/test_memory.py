"""_memory.keep_freed_memory: large tensors freed and allocated again are not page-faulted anew (glibc)."""
import platform
import subprocess
import sys

import pytest

from hashrobust import cli
from hashrobust._memory import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh 64 MB tensor written through and freed, 10 rounds to settle, then the minor page faults of 10 more
SCRIPT = """
import resource, sys, torch
from hashrobust._memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(10):
    torch.ones(16 * 1024 * 1024).add_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 1024 * 1024).add_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_kept_memory_is_not_page_faulted_again():
    """64 MB is 16,384 pages of 4 KiB: without the setting every round faults them in again (10 x 16,384);
    with it, once the heap has grown, almost none does."""
    plain, kept = faults("plain"), faults("keep")
    assert plain > 8 * 16_384
    assert kept < plain / 4, (plain, kept)


def test_the_console_script_keeps_freed_memory_and_main_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 0)
    assert cli.command() == 0 and calls == ["kept", "main"]
    assert keep_freed_memory.__module__ == "hashrobust._memory"
