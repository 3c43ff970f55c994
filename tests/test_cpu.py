"""ctsdg.cpu: the process settings that ctsdg's commands and Inpainter apply on CPU."""

import sys

import pytest
import torch

from ctsdg import cpu


def test_keep_freed_memory_takes_effect_on_glibc():
    ok = cpu.keep_freed_memory()
    assert isinstance(ok, bool)
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert ok  # mallopt accepted both settings
    assert cpu.keep_freed_memory() is ok  # idempotent


def test_env_flag_turns_the_allocator_setting_off(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv(cpu.ENV_FLAG, "0")
    assert cpu.apply_defaults()["keep_freed_memory"] is False and not calls
    monkeypatch.setenv(cpu.ENV_FLAG, "1")
    assert cpu.apply_defaults()["keep_freed_memory"] is True and calls == [1]


def test_threads_never_exceed_the_available_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(cpu, "available_cores", lambda: 1)
        assert cpu.apply_defaults()["threads"] == 1 == torch.get_num_threads()
        monkeypatch.setattr(cpu, "available_cores", lambda: 8)
        cpu.apply_defaults()
        assert torch.get_num_threads() == 1  # never raised, only capped
    finally:
        torch.set_num_threads(before)


def test_available_cores_is_the_affinity_mask():
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this platform")
    assert cpu.available_cores() == len(os.sched_getaffinity(0))


def test_inpainter_applies_the_defaults(monkeypatch):
    from ctsdg import inference

    seen = []
    monkeypatch.setattr(inference, "apply_defaults", lambda: seen.append(1))
    from ctsdg import Generator, ModelConfig

    inference.Inpainter(Generator(ModelConfig(base_width=4)), ModelConfig(base_width=4))
    assert seen == [1]


def test_release_freed_memory_gives_kept_memory_back_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        assert cpu.release_freed_memory() is False
        return
    assert cpu.keep_freed_memory()

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched; kept in the heap after del
    del block
    kept = rss_kib()
    assert cpu.release_freed_memory() is True
    assert rss_kib() < kept - 32 * 1024  # most of the 64 MiB went back to the system
