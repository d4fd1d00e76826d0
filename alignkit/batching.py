"""Batches with little padding: length-grouped training batches, length-sorted scoring batches.

Every batch is padded to its longest sequence, so a batch of randomly drawn examples spends part of its
compute on padding. Training batches are therefore drawn as transformers' Trainer draws them with
`group_by_length` (get_length_grouped_indices: a seeded permutation, cut into mega-batches of up to 50
batches, each sorted by length), and the batches are then shuffled, so batch lengths do not run from long
to short through a mega-batch. Scoring, where order does not matter, sorts by length outright.
"""

import math

import torch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """A DataLoader batch_sampler over indices 0..N-1, in batches of batch_size (the last may be smaller).

    lengths: (N,) the padded length each example needs (for a pair in one forward: the longer side).
    generator: a seeded torch.Generator: a new grouping and batch order every epoch, the same for the same
    generator state (so a run that replays an epoch from the generator's saved state gets the same batches).
    None: no randomness, batches sorted longest first (for validation and scoring).
    """

    def __init__(self, lengths, batch_size, generator=None):
        self.lengths, self.batch_size, self.generator = list(lengths), batch_size, generator
        self.drop_last = False  # read by accelerate when it shards batches across processes

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        if self.generator is None:
            yield from sorted_batches(self.lengths, self.batch_size)
            return
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def sorted_batches(lengths, batch_size):
    """Indices in batches of batch_size, longest first (ties in index order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def in_order(batches, results):
    """Put per-batch results back in example order: batches, lists of indices; results, one (len(batch), ...)
    tensor per batch. Returns one tensor, row i for example i."""
    index = torch.tensor([i for b in batches for i in b])
    out = torch.cat(results)
    return out[torch.argsort(index)]
