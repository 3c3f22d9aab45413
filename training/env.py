"""The run's process and device: which process this is (rank) among how many (world), on which
device, in which dtype, and a print that only rank 0 does.

Started by torchrun, each process finds RANK, WORLD_SIZE and LOCAL_RANK in its environment;
started plainly, it is rank 0 of 1. The device is resolved first and decides the backend:
NCCL for a CUDA run (told its GPU up front with device_id=), gloo for a CPU run, even on a
machine that has GPUs.
"""

import contextlib
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.device import ddp_backend, resolve_device, resolve_dtype
from common.errors import ConfigError, UserError

# dense (no sparsity) bf16/fp16 tensor-core peak FLOP/s for MFU, from NVIDIA's datasheets, matched
# against torch.cuda.get_device_name() in order, first match wins (so H100 PCIe before H100, and
# L40S before L40 before L4, whose names contain one another)
PEAK_FLOPS = [(r"H200", 989e12), (r"H100.*PCIe", 756e12), (r"H100.*NVL", 835e12), (r"H100", 989e12),
              (r"A100", 312e12), (r"L40S", 362e12), (r"L40\b", 181e12), (r"L4\b", 121e12),
              (r"A10\b", 125e12), (r"4090", 165e12), (r"3090", 71e12),
              (r"V100", 125e12), (r"T4\b", 65e12)]


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world, local_rank) when started by torchrun, else None."""
    if "RANK" not in os.environ:
        return None
    return tuple(int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@dataclass
class RunEnv:
    device: torch.device
    dtype: torch.dtype            # the autocast dtype of the training steps; float32 = no autocast
    compile: bool
    rank: int = 0
    world: int = 1
    eval_dtype: torch.dtype | None = None  # evaluation's autocast dtype; None: the same as dtype

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def say(self, *args, **kwargs):
        if self.master:
            print(*args, **kwargs, flush=True)

    def autocast(self, dtype: torch.dtype | None = None):
        """The forward in bf16/fp16 (the backward follows the forward's dtypes); dtype: another
        one than the training steps' (evaluation's)."""
        dtype = dtype or self.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.ddp:
            dist.all_reduce(t, op=op)
        return t

    def barrier(self):
        if self.ddp:
            dist.barrier()

    def on_master(self, work):
        """work() on rank 0 alone (a preparation, a checkpoint write), and every rank hears how it
        went: where it failed, each rank raises the same error now, rather than waiting at the
        next collective for a rank that has stopped until the process group times out. Returns
        work()'s result on rank 0, None elsewhere. A collective: call it on every rank."""
        result, failure = None, None
        if self.master:
            try:
                result = work()
            except Exception as e:  # a UserError, or a bug: rank 0 re-raises it with its traceback
                failure = e
        if self.ddp:
            said = [None if failure is None else str(failure) if isinstance(failure, UserError)
                    else f"rank 0 stopped ({type(failure).__name__}: {failure})"]
            dist.broadcast_object_list(said, src=0)
            if not self.master and said[0] is not None:
                raise UserError(said[0])
        if failure is not None:
            raise failure
        return result

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()


def start_env(cfg) -> RunEnv:
    """Resolve device, dtype and compile from cfg, then join the process group under torchrun."""
    rank, world, local_rank = torchrun_ranks() or (0, 1, None)
    device = resolve_device(cfg.device, local_rank)
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"dtype=float16 needs CUDA (a GradScaler); on {device.type} use float32 or bfloat16")
    compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    env = RunEnv(device, dtype, compile, rank, world, eval_dtype=resolve_dtype(cfg.dtype, device, use="eval"))
    if env.ddp:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=ddp_backend(device),
                                device_id=device if device.type == "cuda" else None)
    return env


def peak_flops(device_name: str) -> float | None:
    """The dense bf16/fp16 peak of a known GPU by its name, else None."""
    return next((peak for pattern, peak in PEAK_FLOPS if re.search(pattern, device_name)), None)


def run_peak_flops(env: RunEnv, override: float | None) -> float | None:
    """The peak MFU is reported against: one device's (--peak_flops, or a known GPU's in
    bf16/fp16) times the number of processes, since a step's tokens are every process's. A CPU's
    peak depends on its cores, clock and vector units, so it is not guessed."""
    if override:
        return override * env.world
    if env.device.type != "cuda" or env.dtype == torch.float32:
        return None
    one = peak_flops(torch.cuda.get_device_name(env.device))
    return one * env.world if one else None


class StepTimer:
    """Pure training time, without a host sync per step. On CUDA each step is bracketed by two
    events recorded on the stream, and their elapsed time is read only when asked (at a log or
    an eval, which wait for the GPU anyway); elsewhere the work is synchronous and a plain clock
    around the step is exact. What is read is also added to the run's phases."""

    def __init__(self, device: torch.device, phases: "Phases"):
        # the events go on the stream of the run's own device: a bare record() would put them on
        # the current device's (cuda:0's), timing nothing of a run on cuda:1
        self.device, self.cuda, self.phases = device, device.type == "cuda", phases
        self.pending, self.t0 = [], 0.0
        self.steps, self.seconds = 0, 0.0  # since the last rate()

    def start(self):
        if self.cuda:
            self.pending.append([torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)])
            self.pending[-1][0].record(torch.cuda.current_stream(self.device))
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        self.steps += 1
        if self.cuda:
            self.pending[-1][1].record(torch.cuda.current_stream(self.device))
        else:
            self.pending.append(time.perf_counter() - self.t0)

    def split(self, phase: str = "steps") -> float:
        """Seconds of the steps timed since the last split (waits for them on CUDA)."""
        if self.cuda:
            if self.pending:
                self.pending[-1][1].synchronize()
            seconds = sum(a.elapsed_time(b) for a, b in self.pending) / 1000
        else:
            seconds = sum(self.pending)
        self.pending = []
        self.seconds += seconds
        self.phases.seconds[phase] += seconds
        return seconds

    def rate(self) -> float:
        """Steps per second since the last call (of the steps split so far)."""
        rate = self.steps / max(self.seconds, 1e-9)
        self.steps, self.seconds = 0, 0.0
        return rate


class Phases:
    """Wall seconds by phase of the run (setup, evaluation, checkpoints, ...), for the summary a
    run ends with: where a user's minutes went, not only the optimizer steps'."""

    def __init__(self):
        self.start, self.seconds = time.perf_counter(), defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self.start
