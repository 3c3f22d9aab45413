"""Which device, dtype and distributed backend a run uses: one rule for train.py, sample.py
and the benchmarks, written as small functions so the GPU rules can be tested on a CPU.

    resolve_device("auto")  -> cuda if PyTorch sees a GPU, else mps (Apple), else cpu
    default_dtype(device)   -> bfloat16 where the GPU computes it natively (compute capability
                               8.0+: A100, H100, RTX 30xx/40xx, L4, ...), float16 on older GPUs
                               (V100, T4: bf16 is only emulated there), float32 elsewhere
    ddp_backend(device)     -> nccl for CUDA runs, gloo for everything else

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


def native_bf16(device_type: str, cap: tuple[int, int] | None) -> bool:
    """Does this hardware compute bfloat16 itself? CUDA from compute capability 8.0 (Ampere);
    CPUs are left out on purpose: without AMX/AVX512-BF16 units bf16 matmuls are slower there."""
    return device_type == "cuda" and cap is not None and cap >= (8, 0)


def default_dtype(device_type: str, cap: tuple[int, int] | None = None) -> torch.dtype:
    """The compute dtype 'auto' means: bf16 where native, fp16 on older CUDA GPUs (training
    then needs a GradScaler, which train.py turns on), float32 elsewhere."""
    if device_type != "cuda":
        return torch.float32
    return torch.bfloat16 if native_bf16(device_type, cap) else torch.float16


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' or a dtype name -> torch.dtype, checked against the device."""
    if name == "auto":
        return default_dtype(device.type, capability(device))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
    if dtype is None:
        raise ConfigError(f"--dtype={name}: use auto, float32, bfloat16 or float16")
    return dtype


def ddp_backend(device: torch.device) -> str:
    """NCCL moves CUDA tensors between GPUs; gloo everything else (a CPU run on a GPU host too)."""
    return "nccl" if device.type == "cuda" else "gloo"
