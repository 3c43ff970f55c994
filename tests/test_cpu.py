"""ctsdg.cpu: the process settings that ctsdg's commands and Inpainter apply on CPU."""

import dataclasses
import os
import sys
from pathlib import Path

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


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_fast_bf16_follows_the_cpu_flags():
    """oneDNN has bf16 kernels from AVX-512 (BW, VL, DQ) up, or with AVX2 plus AVX-NE-CONVERT; an AVX2-only
    x86 CPU has none, and neither has oneDNN limited to AVX2 or below (ONEDNN_MAX_CPU_ISA=AVX2, how
    docs/speed.md runs an AVX2 CPU's code on an AVX-512 one), whatever the flags say."""
    fast = cpu.has_fast_bf16()
    assert isinstance(fast, bool)
    flags = _cpu_flags()
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI"):
        assert fast is False
    elif flags is not None and "avx2" in flags:  # x86 Linux
        avx512 = {"avx512bw", "avx512vl", "avx512dq"} <= flags
        assert fast == (avx512 or "amx_bf16" in flags or "avx_ne_convert" in flags)


def test_bf16_on_a_cpu_without_native_bf16_is_refused_with_the_fix(monkeypatch):
    monkeypatch.delenv(cpu.ALLOW_SLOW_BF16, raising=False)
    monkeypatch.setattr(cpu, "has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"--precision bf16: .*40× slower.*Use fp32.*CTSDG_ALLOW_SLOW_BF16=1"):
        cpu.check_bf16("--precision bf16")
    monkeypatch.setenv(cpu.ALLOW_SLOW_BF16, "1")
    cpu.check_bf16("--precision bf16")  # the user asked for it
    monkeypatch.setattr(cpu, "has_fast_bf16", lambda: True)
    monkeypatch.delenv(cpu.ALLOW_SLOW_BF16)
    cpu.check_bf16("--precision bf16")


def test_inpainter_training_and_cli_refuse_slow_bf16(monkeypatch, tmp_path, capsys):
    from ctsdg import Generator, Inpainter, ModelConfig
    from ctsdg.cli import main
    from ctsdg.train import _amp_dtype
    from ctsdg.train_config import TrainConfig

    monkeypatch.delenv(cpu.ALLOW_SLOW_BF16, raising=False)
    monkeypatch.setattr(cpu, "has_fast_bf16", lambda: False)
    g = Generator(ModelConfig(base_width=4))
    with pytest.raises(ValueError, match="precision bf16"):
        Inpainter(g, g.config, precision="bf16")
    assert Inpainter(g, g.config, precision="fp32").precision == "fp32"
    config = TrainConfig()
    with pytest.raises(ValueError, match=r"scale.amp=bf16: .*Use fp32 \(--set scale.amp=none"):
        _amp_dtype(dataclasses.replace(config, scale=dataclasses.replace(config.scale, amp="bf16")), torch.device("cpu"))
    assert _amp_dtype(config, torch.device("cpu")) is None

    out, examples = tmp_path / "out.png", Path(__file__).resolve().parents[1] / "examples"
    code = main(["inpaint", "--image", str(examples / "photo.png"), "--mask", str(examples / "mask.png"),
                 "--output", str(out),
                 "--precision", "bf16"])
    assert code != 0 and not out.exists()
    assert "CTSDG_ALLOW_SLOW_BF16" in capsys.readouterr().err
