"""Pieces every training stage shares: accelerate setup, seeding, dvclive, batching."""

import random

import numpy as np
import torch

from alignkit.errors import ParamsError

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(precision, key, grad_accum_steps=1):
    """An Accelerator for CPU, one GPU, or several under `accelerate launch`.

    precision: fp32 | bf16 | fp16 (fp16 needs CUDA: on a CPU it is an error naming `key`).
    """
    from accelerate import Accelerator

    if precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError(f"{key}: fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    return Accelerator(mixed_precision=PRECISIONS[precision], gradient_accumulation_steps=grad_accum_steps)


class NullLive:
    """Stands in for dvclive.Live on processes other than the main one."""

    def log_metric(self, *args, **kwargs):
        pass

    def next_step(self):
        pass

    def end(self):
        pass


def open_live(live_dir, accelerator):
    """dvclive logger writing step curves under live_dir (main process only).

    It neither edits dvc.yaml nor creates DVC experiments: the pipeline declares
    the plots, and `dvc exp run` makes the experiments.
    """
    if not accelerator.is_main_process:
        return NullLive()
    from dvclive import Live

    return Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)


def seeded_loader(dataset, batch_size, seed, collate_fn, shuffle=True):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       collate_fn=collate_fn)
