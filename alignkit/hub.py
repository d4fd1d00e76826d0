"""Preference data on the Hugging Face Hub: data.<set>.hub -> the columns and records a file would give.

The dataset repository is fetched at one pinned commit with huggingface_hub.snapshot_download (from the local
Hugging Face cache when it is there, so an offline run -- HF_HUB_OFFLINE=1, or no network -- reads it), then
read with datasets.load_dataset from that snapshot, which infers the configs and splits from the repository's
files and dataset card as it does for a Hub id. What was read is recorded: id, config, split, the commit, and
each file with its size.
"""

import re
from pathlib import Path

from alignkit.data import Record
from alignkit.errors import DataError, show


def label(hub):
    """'owner/name@081de90 (split train)': how errors and the stage's summary name a Hub data set."""
    config = f", config {hub.config}" if hub.config else ""
    return f"{hub.id}@{hub.revision[:7]} (split {hub.split}{config})"


def snapshot(hub, key):
    """The local directory of the dataset repository at hub.revision, fetched if it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(hub.id, repo_type="dataset", revision=hub.revision))
    except GatedRepoError:
        raise DataError(
            f"{key}.hub: {hub.id} is gated: accept its terms on the Hub, then `huggingface-cli login`"
        ) from None
    except RevisionNotFoundError:
        raise DataError(f"{key}.hub.revision: no commit {hub.revision} in the Hub dataset {hub.id}") from None
    except RepositoryNotFoundError:
        raise DataError(f"{key}.hub.id: no dataset {show(hub.id)} on the Hub (or it is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        reason = "offline mode is on" if _offline() else f"the Hub cannot be reached ({type(err).__name__})"
        raise DataError(
            f"{key}.hub: {hub.id} at {hub.revision[:12]} is not in the Hugging Face cache and {reason}; on a "
            f"machine with network: hf download {hub.id} --repo-type dataset --revision {hub.revision} "
            "(then copy its cache, HF_HOME), or export it to a file and set data path to it"
        ) from None


def _offline():
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def read_hub(hub, key):
    """(label, column names, [Record], source) of data.<set>.hub = {id, config, split, revision}; key that set's
    params key. source is what metrics/data/<set>.json records of it."""
    import datasets

    root = snapshot(hub, key)
    where = label(hub)
    try:  # the config and its splits, from the repository's files and card, before any data is read
        builder = datasets.load_dataset_builder(str(root), name=hub.config)
    except ValueError as err:  # an unknown config
        raise DataError(f"{key}.hub.config: {where}: {str(err).strip().splitlines()[0][:300]}") from None
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise DataError(f"{key}.hub: {where}: no data files found ({first})") from None
    splits = list(builder.config.data_files or {})
    if splits and re.split(r"[\[+]", hub.split)[0] not in splits:  # train[:1000] and train+test are splits too
        raise DataError(f"{key}.hub.split: {where}: no split {show(hub.split)} (splits: {', '.join(splits)})")
    table = datasets.load_dataset(str(root), name=hub.config, split=hub.split)
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)
    source = {
        "hub": hub.id,
        "config": hub.config,
        "split": hub.split,
        "revision": root.name,  # the snapshot directory is named by its commit
        "files": {str(p.relative_to(root)): p.stat().st_size for p in files},
    }
    records = [Record(i, None, row) for i, row in enumerate(table, start=1)]
    return where, list(table.column_names), records, source
