"""Data-parallel compare on torch.distributed, launched by torchrun (or accelerate launch).

    torchrun --nproc-per-node 8 -m driftscope compare base/ tuned/ --probes big.jsonl

Each rank loads its models on its own device (its local GPU under --device
auto), scores every world-th length-sorted batch (dealt round-robin, so the
ranks finish together), and the reducers are merged: exactly for counts, sums
and moments, within the sketch's stated error for quantiles. Rank 0 writes the
run; the others write nothing. Without torchrun's environment (WORLD_SIZE
unset or 1) every call here is a no-op and nothing is initialised.

A rank that fails (bad input, out of memory) does not leave the others waiting:
each phase runs inside `together()`, whose exit is a collective every rank
reaches, failed or not; the first failure (lowest rank) is raised on every
rank, and only rank 0 prints it. A rank killed outright is torchrun's to
handle: it stops the others.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from driftscope.errors import DriftscopeError

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails instead of hanging


class RankFailed(DriftscopeError):
    """Another rank failed: its error, carried to this one."""

    def __init__(self, reason: str, hint: str | None, exit_code: int):
        super().__init__(reason, hint)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's items: every world-th, from its rank."""
        return items[self.rank :: self.world] if self.world > 1 else items

    @contextmanager
    def together(self):
        """Run a phase; then every rank learns whether any failed, and all raise the first failure."""
        if self.world == 1:
            yield
            return
        failure = None
        try:
            yield
        except DriftscopeError as e:
            failure = (e.reason, e.hint, e.exit_code)
        except Exception as e:  # noqa: BLE001 - out of memory and the like: exit 1 on every rank, said once
            failure = (f"rank {self.rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None, 1)
        failures = self.all_gather(failure)
        first = next((f for f in failures if f is not None), None)
        if first is not None:
            raise RankFailed(*first)

    def all_gather(self, obj) -> list:
        """obj from every rank, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the sum over ranks, on every rank."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend}


_GROUP: Group | None = None


def current() -> Group:
    """The process group torchrun described in the environment, set up on first use."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _GROUP = Group()
        return _GROUP
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:  # --device auto (and cuda) then mean this rank's own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    _GROUP = Group(dist.get_rank(), dist.get_world_size(), backend)
    return _GROUP


def settle() -> None:
    """Leave together: every rank waits here for the others (rank 0 has said why a run
    failed before it arrives), then the process group is closed. A no-op alone."""
    if _GROUP is None or _GROUP.world == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def fail_if_testing(rank: int) -> None:
    """Test-only: DRIFTSCOPE_TEST_FAIL_RANK=N makes rank N's probe loading fail."""
    if os.environ.get("DRIFTSCOPE_TEST_FAIL_RANK") == str(rank):
        from driftscope.errors import ProbeError

        raise ProbeError(f"rank {rank}: the probe shard cannot be read (a test-made failure)",
                         "check that every node has the probe files")


# -- merging what the ranks scored ------------------------------------------------


def merge_shards(group: Group, scorers) -> None:
    """Every rank's drift reducers merged into rank 0's, in rank order; the offset
    sums (which every rank's answering pass needs) summed on every rank."""
    if group.world == 1:
        return
    for s in scorers:
        merge_offsets(group, s)
        if s.layers is not None:
            s.layers.reduce(group.sum_)
    merge_reducers(group, scorers)


def merge_offsets(group: Group, scorer) -> None:
    """The bias-offset sums of every rank, summed on every rank (in place)."""
    group.sum_(scorer.est.sums)
    group.sum_(scorer.est.counts)


def merge_reducers(group: Group, scorers) -> None:
    """Every rank's drift reducers (sketches, moments, class masses) merged into rank 0's."""
    if group.world == 1:
        return
    states = group.all_gather([s.acc.state() for s in scorers])
    if group.main:
        for other in states[1:]:
            for s, state in zip(scorers, other):
                s.acc.merge_state(state)


def answer_shard(group: Group, inputs) -> set[int] | None:
    """This rank's probes for the answering pass: every world-th in length order."""
    if group.world == 1:
        return None
    return {e.index for e in group.shard(sorted(inputs.encoded, key=lambda e: (len(e.ids), e.index)))}


def gather_answers(group: Group, frames: list):
    """Rank 0: each checkpoint's answer frames from every rank, concatenated."""
    if group.world == 1:
        return frames
    import polars as pl

    every = group.all_gather(frames)
    return [pl.concat([rank[i] for rank in every]) for i in range(len(frames))] if group.main else frames
