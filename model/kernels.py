"""Which of PyTorch's fused attention kernels (SDPA backends) each phase of the model may use.

A choice of kernels, not of math: every allowed kernel computes the same attention
(model/attention.py), and bench/gpu_check.py holds them to it on a GPU.
"""

from torch.nn.attention import SDPBackend, sdpa_kernel

# The SDPA kernels each phase may use, chosen here for every caller (GPT.forward enters the
# phase's choice once per forward, the static decode step once per step). SDPA tries them in
# PyTorch's order (cuDNN first on sm90+ GPUs, if allowed) and math is the fallback that always
# runs. cuDNN's kernels are out of every phase:
#   train    cuDNN's backward returns NaN gradients when a mask tensor is passed and the sequence
#            is 64 past a multiple of 128, on H100/H200 (pytorch#196678, found through trl#7181);
#            sliding-window training passes one
#   eval     the forward that trained, so a val loss measures the model, not a kernel change
#   prefill  cuDNN silently corrupts generation of models with fewer than 8 KV heads, as every
#            model here has (pytorch#193893): the prompt's keys and values are part of it
#   decode   the same report; with one query the kernel choice costs next to nothing
# bench/gpu_check.py runs a forward and backward through each allowed kernel (and cuDNN's, for
# comparison) against math: what a change to this table must pass first.
SDPA_BACKENDS = {phase: [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
                 for phase in ("train", "eval", "prefill", "decode")}


def sdpa_phase(training: bool, cached: bool, t_q: int) -> str:
    """Which phase a forward is: training or evaluation without a cache; with one, the prompt
    (prefill) or one new token per row (decode)."""
    if not cached:
        return "train" if training else "eval"
    return "decode" if t_q == 1 else "prefill"


def phase_kernels(training: bool, cached: bool, t_q: int):
    """The context a forward runs its attention in: its phase's SDPA_BACKENDS."""
    return sdpa_kernel(SDPA_BACKENDS[sdpa_phase(training, cached, t_q)])
