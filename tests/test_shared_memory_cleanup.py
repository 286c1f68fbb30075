"""What a killed Lava run leaves in /dev/shm is removed by the supervisor, including a segment whose creator
was killed between creating it and giving it a size (an empty segment cannot be mapped, so ``SharedMemory``
cannot open it: one was left behind by a SIGTERM test run before this was handled)."""

from __future__ import annotations

import os

import _posixshmem
from multiprocessing import shared_memory

from snc.runtime.backends.supervised import _unlink_shared_memory, shm_prefix

FAKE_PID = 999_999_999  # above any pid_max: no real worker's segments are touched


def _segments() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(shm_prefix(FAKE_PID)))


def test_empty_and_sized_segments_of_a_killed_worker_are_unlinked():
    empty = shm_prefix(FAKE_PID) + "empty"
    os.close(_posixshmem.shm_open("/" + empty, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600))
    sized = shared_memory.SharedMemory(shm_prefix(FAKE_PID) + "sized", create=True, size=4096)
    sized.close()  # the creator is gone; its segment stays until unlinked
    assert _segments() == [empty, sized.name]
    _unlink_shared_memory(FAKE_PID)
    assert _segments() == []
