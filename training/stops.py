"""Two reasons a run stops early, noticed without slowing the steps down.

Stopper turns Ctrl-C / SIGTERM into a request to stop after the current step, so the loop can
save last.pt first; a second Ctrl-C quits at once (last.pt from the latest eval stays).

DivergenceWatch notices a non-finite loss. Reading the loss back every step would make the CPU
wait for the GPU at every step; instead the first bad iteration is kept on the device and read
only where the loop waits anyway: at a log line, an eval, a save. A checkpoint is never written
after a bad step, so the last good last.pt is what the run leaves.
"""

import signal
import sys

import torch
import torch.distributed as dist

NEVER = 2**62  # "no bad iteration yet": larger than any iteration, so the MIN over processes works


class Stopper:
    def __init__(self):
        self.signal = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step to save last.pt "
                  f"(Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)

    def requested(self, env, agree_now: bool) -> bool:
        """Did anyone get Ctrl-C / SIGTERM? One process alone can just look. In DDP all processes
        must stop at the same step, so they agree with a collective, which waits: only when
        agree_now (at log steps), not every step."""
        if not env.ddp:
            return self.signal is not None
        if not agree_now:
            return False
        flag = env.all_reduce(torch.tensor([self.signal or 0], device=env.device), op=dist.ReduceOp.MAX)
        self.signal = self.signal or int(flag.item()) or None
        return self.signal is not None

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class DivergenceWatch:
    def __init__(self, device):
        self.first_bad = torch.tensor(NEVER, device=device)

    def update(self, loss: torch.Tensor, it: int):
        """Remember `it` if this step's loss is not finite: device ops only, no host read."""
        here = torch.where(torch.isfinite(loss), NEVER, it)
        self.first_bad = torch.minimum(self.first_bad, here)

    def check(self, env) -> int | None:
        """The first bad iteration of any process, or None (a collective in DDP; it waits)."""
        bad = int(env.all_reduce(self.first_bad.clone(), op=dist.ReduceOp.MIN).item())
        return None if bad == NEVER else bad
