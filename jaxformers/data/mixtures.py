"""Several tasks' examples sampled by rate, as a pure function of the example index.

Rates are the T5 paper's examples-proportional mixing (Raffel et al. 2020, section 3.5.2): task
i with n_i training examples is drawn with rate ``min(n_i, K) / sum_j min(n_j, K)``; the cap K
keeps a huge task from drowning the small ones (K = 0: no cap).

Global example slot ``i`` (``step * batch + row``, as ``pipeline.step_rows`` lays batches out)
draws its task from a generator seeded by ``(seed, block)`` for the block of ``BLOCK`` slots it
falls in; the task's own example is the ``c``-th of that task's shuffled, repeating order, where
``c`` counts the earlier slots that drew the same task. Every batch is therefore a function of
the step alone: a run resumed from a checkpoint reads exactly the batches it would have read,
whatever happened before (the per-block counts are cached, so reading on is cheap).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 4096  # slots drawn per generator call


def proportional_rates(sizes: Sequence[int], cap: int = 0) -> np.ndarray:
    """Examples-proportional rates ``min(n_i, cap) / sum_j min(n_j, cap)`` (cap 0: no cap)."""
    sizes = np.asarray(sizes, np.float64)
    if len(sizes) == 0 or (sizes < 0).any():
        raise ValueError(f"mixture sizes {sizes.tolist()}: give one size >= 0 per task")
    if cap < 0:
        raise ValueError(f"mixture cap K={cap} must be >= 0 (0: no cap)")
    capped = np.minimum(sizes, cap) if cap else sizes
    if capped.sum() <= 0:
        raise ValueError("every task of the mixture is empty: nothing to sample")
    return capped / capped.sum()


class Mixture:
    """Random access to a rate-sampled mixture of random-access sources.

    Args:
      sources: each task's examples (``len`` and ``[i]``).
      rates: sampling rate per task (normalised here); ``proportional_rates`` gives T5's.
      seed: decides the task draws and each task's shuffling.

    ``mixture[i]`` is the example of slot ``i``; ``task_of(i)`` / ``locate(i)`` say where it came
    from. ``len`` is the total size of the sources (one "epoch" for the Trainer's bookkeeping).
    """

    def __init__(self, sources: Sequence, rates: Sequence[float], seed: int = 0):
        rates = np.asarray(rates, np.float64)
        if len(rates) != len(sources) or (rates < 0).any() or rates.sum() <= 0:
            raise ValueError(
                f"mixture rates {rates.tolist()} for {len(sources)} tasks: give one rate >= 0 "
                "per task, not all 0"
            )
        for k, (src, r) in enumerate(zip(sources, rates)):
            if r > 0 and len(src) == 0:
                raise ValueError(f"task {k} of the mixture has rate {r} but no examples")
        self.sources, self.rates, self.seed = list(sources), rates / rates.sum(), int(seed)
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._cum = [np.zeros(len(self.sources), np.int64)]  # task counts before each block
        self._blocks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def _block(self, b: int) -> np.ndarray:
        """The task of each slot of block ``b`` (the last few blocks are kept: batches read
        consecutive slots)."""
        if b not in self._blocks:
            rng = np.random.default_rng([self.seed, b])
            if len(self._blocks) >= 4:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[b] = rng.choice(len(self.sources), size=BLOCK, p=self.rates)
        return self._blocks[b]

    def _counts_before(self, b: int) -> np.ndarray:
        while len(self._cum) <= b:
            k = len(self._cum) - 1
            counts = np.bincount(self._block(k), minlength=len(self.sources))
            self._cum.append(self._cum[-1] + counts)
        return self._cum[b]

    def locate(self, i: int) -> tuple[int, int]:
        """(task, that task's example index) of slot ``i``."""
        b, j = divmod(int(i), BLOCK)
        tasks = self._block(b)
        t = int(tasks[j])
        c = int(self._counts_before(b)[t] + np.count_nonzero(tasks[:j] == t))
        return t, self._order(t, c)

    def _order(self, t: int, c: int) -> int:
        """The ``c``-th example of task ``t``: a fresh permutation of its examples each epoch."""
        n = len(self.sources[t])
        epoch, pos = divmod(c, n)
        if (t, epoch) not in self._perms:
            if len(self._perms) >= 4 * len(self.sources):
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng([self.seed, 1 + t, epoch])
            self._perms[t, epoch] = rng.permutation(n)
        return int(self._perms[t, epoch][pos])

    def task_of(self, i: int) -> int:
        return self.locate(i)[0]

    def __getitem__(self, i: int):
        t, k = self.locate(i)
        return self.sources[t][k]
