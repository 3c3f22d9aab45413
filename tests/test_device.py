"""The GPU rules as small pure functions, checked on the CPU: which device, which dtype (by compute
capability), which DDP backend, which MFU peak, and how a torchrun process joins its group."""

import pytest
import torch

from common.device import cpu_bf16, ddp_backend, default_dtype, native_bf16, resolve_device, resolve_dtype
from common.errors import ConfigError
from training import env as env_mod
from training.env import peak_flops, start_env


@pytest.mark.parametrize("device_type, cap, dtype", [
    ("cuda", (9, 0), torch.bfloat16),   # H100
    ("cuda", (8, 0), torch.bfloat16),   # A100
    ("cuda", (8, 9), torch.bfloat16),   # L4, RTX 4090
    ("cuda", (7, 5), torch.float16),    # T4: is_bf16_supported() says yes, but only emulates it
    ("cuda", (7, 0), torch.float16),    # V100
    ("mps", None, torch.float32),
])
def test_default_dtype_by_compute_capability(device_type, cap, dtype):
    assert default_dtype(device_type, cap) == dtype
    assert default_dtype(device_type, cap, use="decode") == dtype   # a GPU decodes as it trains
    assert native_bf16(device_type, cap) == (dtype == torch.bfloat16)


NO_BF16 = {"avx512_f": True, "avx2": True, "avx512_bf16": False, "amx_bf16": False}  # e.g. Skylake-X


@pytest.mark.parametrize("cpu, native", [
    ({**NO_BF16, "avx512_bf16": True}, True),          # Zen 4, Cooper Lake
    ({**NO_BF16, "amx_bf16": True}, True),             # Sapphire Rapids (AMX tiles)
    (NO_BF16, False),
    ({"avx2": True}, False),                           # an older x86
    ({}, False),                                       # nothing known (e.g. an ARM torch without flags)
])
def test_cpu_bf16_from_the_cpus_capabilities(cpu, native):
    assert cpu_bf16(cpu) == native
    assert native_bf16("cpu", None, cpu) == native
    # training and decoding stay float32 on every CPU; evaluation takes bf16 where the CPU computes it
    bf16 = torch.bfloat16 if native else torch.float32
    assert default_dtype("cpu", None, "train", cpu) == torch.float32
    assert default_dtype("cpu", None, "eval", cpu) == bf16
    assert default_dtype("cpu", None, "decode", cpu) == torch.float32


def test_cpu_bf16_reads_proc_cpuinfo_on_a_torch_without_get_capabilities(monkeypatch, tmp_path):
    import builtins
    import common.device as device
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    real_open = builtins.open
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(info if p == "/proc/cpuinfo" else p, *a, **k))
    assert device._cpu_capabilities()["avx512_bf16"] and device.cpu_bf16()
    info.write_text("flags\t\t: fpu sse2 avx2\n")
    assert not device.cpu_bf16()


def test_backend_follows_the_runs_device_not_the_machine():
    assert ddp_backend(torch.device("cuda", 1)) == "nccl"
    assert ddp_backend(torch.device("cpu")) == "gloo"


def test_resolve_device_and_dtype_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu"), use="eval") == \
        (torch.bfloat16 if cpu_bf16() else torch.float32)
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="--device=tpu"):
        resolve_device("tpu")


def test_resolve_device_on_a_pretend_gpu_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)   # torchrun: its own GPU
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")      # a CPU run stays on the CPU
    with pytest.raises(ConfigError, match="2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="under torchrun"):
        resolve_device("cuda:0", local_rank=1)


class FakeCfg:
    def __init__(self, device, dtype="auto", compile=None):
        self.device, self.dtype, self.compile = device, dtype, compile


def test_torchrun_cpu_run_on_a_gpu_host_uses_gloo(monkeypatch):
    """torchrun --nproc_per_node=2 train.py --device=cpu on a machine with one GPU: gloo, and no
    torch.cuda.set_device(LOCAL_RANK) (which would fail with 'invalid device ordinal')."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail(f"set_device({d}) on a CPU run"))
    monkeypatch.setattr(env_mod.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    env = start_env(FakeCfg("cpu"))
    assert calls == [{"backend": "gloo", "device_id": None}]
    assert (env.rank, env.world, env.device, env.dtype) == (1, 2, torch.device("cpu"), torch.float32)


def test_torchrun_cuda_run_uses_nccl_with_its_own_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(env_mod.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    env = start_env(FakeCfg("auto"))
    cuda1 = torch.device("cuda", 1)
    assert calls == [("set_device", cuda1), {"backend": "nccl", "device_id": cuda1}]
    assert env.device == cuda1 and env.dtype == torch.float16 and env.compile  # a T4: fp16, not emulated bf16


def test_float16_needs_cuda():
    with pytest.raises(ConfigError, match="float16 needs CUDA"):
        start_env(FakeCfg("cpu", dtype="float16"))


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12), ("NVIDIA A10", 125e12),
    ("NVIDIA GeForce RTX 4090", 165e12), ("Tesla V100-SXM2-16GB", 125e12), ("Tesla T4", 65e12),
    ("NVIDIA A10G", None), ("Some New GPU", None),
])
def test_mfu_peak_by_name(name, peak):
    assert peak_flops(name) == peak


def test_the_step_timer_records_on_the_runs_own_device(monkeypatch):
    """A run on cuda:1 in one process (cuda:0 current): its step events go on cuda:1's stream.
    A stand-in torch.cuda records where each event is queued."""
    streams = []

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            streams.append(stream)

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 250.0

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream of {torch.device(device)}")
    phases = env_mod.Phases()
    timer = env_mod.StepTimer(torch.device("cuda", 1), phases)
    for _ in range(2):
        timer.start()
        timer.stop()
    assert timer.split() == 0.5 and timer.rate() == 4.0
    assert streams == ["stream of cuda:1"] * 4
