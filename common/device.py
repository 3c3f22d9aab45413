"""Which device, dtype and distributed backend a run uses: one rule for train.py, sample.py
and the benchmarks, written as small functions so the GPU rules can be tested on a CPU.

    resolve_device("auto")    -> cuda if PyTorch sees a GPU, else mps (Apple), else cpu
    native_bf16(device)       -> does the hardware compute bfloat16 itself? CUDA from compute
                                 capability 8.0 (A100, H100, RTX 30xx/40xx, L4, ...); a CPU with
                                 AVX512-BF16 or AMX-BF16 units
    default_dtype(device, use) -> what dtype=auto means, for training, evaluation or decoding
    ddp_backend(device)       -> nccl for CUDA runs, gloo for everything else

Why not torch.cuda.is_bf16_supported(): it also returns True on GPUs that merely emulate bf16
(T4, V100), where autocast then runs slowly, Inductor declines to compile bf16 graphs and SDPA
falls back to its math kernel. The compute capability says what the hardware does.
"""

import torch

from .errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch.device a run asks for, checked against this machine. Under torchrun
    (local_rank given) 'cuda' and 'auto' mean this process's own GPU, cuda:LOCAL_RANK."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available() and local_rank is None:
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device={name} is not a device; use {DEVICES}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device={name}: use {DEVICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device={name} but PyTorch sees no CUDA GPU (no GPU here, or a CPU-only "
                              f"build of torch); use --device=cpu or --device=auto")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        elif local_rank is not None and device.index != local_rank:
            raise ConfigError(f"--device={name} under torchrun: give --device=cuda and each process "
                              f"takes its own GPU (cuda:LOCAL_RANK)")
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device={name}, but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device={name} but this machine has no Apple GPU (MPS); use --device=cpu or auto")
    if device.type == "mps" and local_rank is not None:
        raise ConfigError("torchrun on MPS is not supported; use --device=cpu or a CUDA machine")
    return device


def capability(device: torch.device) -> tuple[int, int] | None:
    """A CUDA device's compute capability, e.g. (8, 0) for an A100; None off CUDA."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def cpu_bf16(capabilities: dict | None = None) -> bool:
    """Does this CPU compute bfloat16 itself (AVX512-BF16 or AMX-BF16 units)? Without them a
    bf16 matmul is converted to float32 and back, slower than float32 alone. capabilities:
    torch.cpu.get_capabilities()'s answer, or the CPU flags from /proc/cpuinfo on a torch
    without it (the tests pass faked ones)."""
    if capabilities is None:
        capabilities = _cpu_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def _cpu_capabilities() -> dict:
    try:
        return torch.cpu.get_capabilities()
    except AttributeError:  # an older torch: read the flags the kernel reports
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            return {}
        return {flag: True for flag in flags}


def native_bf16(device_type: str, cap: tuple[int, int] | None = None, cpu: dict | None = None) -> bool:
    """Does this hardware compute bfloat16 itself? A CUDA GPU from compute capability 8.0
    (Ampere); a CPU with AVX512-BF16 or AMX (cpu_bf16; cpu: its capabilities, faked in tests)."""
    if device_type == "cuda":
        return cap is not None and cap >= (8, 0)
    return device_type == "cpu" and cpu_bf16(cpu)


def default_dtype(device_type: str, cap: tuple[int, int] | None = None, use: str = "train",
                  cpu: dict | None = None) -> torch.dtype:
    """What dtype=auto means, for a use: "train" (the training steps), "eval" (the loss passes of
    an evaluation, no backward) or "decode" (sampling): the one rule, which every setting, script
    and document points to. On CUDA the same for all three: bf16 where native, fp16 on older GPUs
    (training then needs a GradScaler, which train.py turns on). On a CPU that computes bf16,
    each use as it runs best there (bench/bench_bf16.py measures it): evaluation in bf16; the
    training steps in float32 (autocast's casts cost more than its matmuls save at this
    project's sizes), and decoding too (sample.py as a whole ran slower in bf16). float32
    elsewhere."""
    if device_type == "cuda":
        return torch.bfloat16 if native_bf16(device_type, cap) else torch.float16
    if use == "eval" and native_bf16(device_type, cap, cpu):
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str, device: torch.device, use: str = "train") -> torch.dtype:
    """'auto' (default_dtype's rule for this use) or a dtype name -> torch.dtype."""
    if name == "auto":
        return default_dtype(device.type, capability(device), use)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
    if dtype is None:
        raise ConfigError(f"--dtype={name}: use auto, float32, bfloat16 or float16")
    return dtype


def ddp_backend(device: torch.device) -> str:
    """NCCL moves CUDA tensors between GPUs; gloo everything else (a CPU run on a GPU host too)."""
    return "nccl" if device.type == "cuda" else "gloo"
