"""Batches with little padding: length-grouped training batches, length-sorted scoring batches.

Every batch is padded to its longest sequence, so a batch of randomly drawn examples spends part of its
compute on padding. Training batches are therefore drawn as transformers' Trainer draws them with
`group_by_length` (get_length_grouped_indices: a seeded permutation, cut into mega-batches of up to 50
batches, each sorted by length), and the full batches are then shuffled, so batch lengths do not run from
long to short through a mega-batch (a short last batch stays last, as a DataLoader leaves it). Scoring,
where order does not matter, sorts by length outright.
"""

import math
import random

import torch

from alignkit.errors import ParamsError


class LengthGroupedBatches(torch.utils.data.Sampler):
    """A DataLoader batch_sampler over indices 0..N-1, in batches of batch_size (the last may be smaller).

    lengths: (N,) the padded length each example needs (for a pair in one forward: the longer side).
    generator: a seeded torch.Generator: a new grouping and batch order every epoch, the same for the same
    generator state (so a run that replays an epoch from the generator's saved state gets the same batches).
    None: no randomness, batches sorted longest first (for validation and scoring).
    processes: how many processes share each optimizer step. Grouping and shuffling work on global batches of
    batch_size x processes, each given out as consecutive per-process batches, which accelerate hands to the
    processes in turn: so P processes of batch_size B train on the same global batches as one of P x B.
    """

    def __init__(self, lengths, batch_size, generator=None, processes=1):
        self.lengths, self.batch_size, self.generator = list(lengths), batch_size, generator
        self.processes = processes
        self.drop_last = False  # read by accelerate when it shards batches across processes

    def __len__(self):
        return sum(math.ceil(len(b) / self.batch_size) for b in self._global(list(range(len(self.lengths)))))

    def _global(self, order):
        size = self.batch_size * self.processes
        return [order[i : i + size] for i in range(0, len(order), size)]

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        if self.generator is None:
            yield from sorted_batches(self.lengths, self.batch_size)
            return
        order = get_length_grouped_indices(self.lengths, self.batch_size * self.processes, generator=self.generator)
        *full, last = self._global(order)
        if len(last) == len(full[0] if full else last):
            full, last = full + [last], []
        # The full global batches in random order, then the short one (if any) last, as a DataLoader leaves it:
        # one short global batch in the middle would shift which process gets which batch after it.
        for batch in [full[k] for k in torch.randperm(len(full), generator=self.generator).tolist()] + [last]:
            for i in range(0, len(batch), self.batch_size):
                yield batch[i : i + self.batch_size]


def sorted_batches(lengths, batch_size):
    """Indices in batches of batch_size, longest first (ties in index order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def in_order(batches, results):
    """Put per-batch results back in example order: batches, lists of indices; results, one (len(batch), ...)
    tensor per batch. Returns one tensor, row i for example i."""
    index = torch.tensor([i for b in batches for i in b])
    out = torch.cat(results)
    return out[torch.argsort(index)]


def batches(items, batch_size, seed):
    """Shuffled full batches: every batch has exactly batch_size items; a partial last one is dropped."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def step_plan(items, batch_size, epochs, max_steps_per_epoch, seed, key):
    """An online stage's plan (ppo, online), worked out once: per epoch, its shuffled full batches of prompts
    (seed + epoch), at most max_steps_per_epoch of them (None: all). Its total length is the number of steps. key:
    the params key of batch_size, named when it is larger than the items."""
    if batch_size > len(items):  # batches() keeps full batches only: there would be none
        raise ParamsError(
            f"{key}: {batch_size} is more than the {len(items)} prompts of the training split; at most {len(items)}"
        )
    return [batches(items, batch_size, seed + epoch)[:max_steps_per_epoch] for epoch in range(epochs)]
