"""Sharing models: dvc push / dvc pull through a local-directory remote and an S3 remote (moto, on 127.0.0.1)."""

import socket
import subprocess

import pytest

from tests.conftest import dvc

TRACKED = [
    "models/reward/helpful/reward_model.pth",
    "models/reward/safety/tokenizer.json",
    "models/sft/model.safetensors",
    "models/dpo/model.safetensors",
    "models/ppo/model.safetensors",
    "data/prepared/helpful/train.jsonl",
    "data/prepared/safety/test.jsonl",
    "generations/dpo.jsonl",
]


def git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True, capture_output=True
    )


def clone(src, dest):
    subprocess.run(["git", "clone", "-q", str(src), str(dest)], check=True)
    return dest


def add_remote(repo, name, url, **options):
    dvc(repo, "remote", "add", "-d", name, url)
    for key, value in options.items():
        dvc(repo, "remote", "modify", name, key, value)
    git(repo, "commit", "-qam", f"remote {name}")


@pytest.mark.slow
def test_local_remote_round_trip(small_copy, tmp_path):
    add_remote(small_copy, "storage", str(tmp_path / "storage"))
    dvc(small_copy, "push")
    fresh = clone(small_copy, tmp_path / "fresh")
    assert not (fresh / "models" / "dpo").exists()
    dvc(fresh, "pull")
    for path in TRACKED:
        assert (fresh / path).read_bytes() == (small_copy / path).read_bytes(), path
    assert "up to date" in dvc(fresh, "status")


def test_push_and_pull_one_model(small_copy, tmp_path):
    add_remote(small_copy, "storage", str(tmp_path / "storage"))
    dvc(small_copy, "push", "dpo")
    fresh = clone(small_copy, tmp_path / "fresh")
    dvc(fresh, "pull", "dpo")
    assert (fresh / "models/dpo/model.safetensors").read_bytes() == (
        small_copy / "models/dpo/model.safetensors"
    ).read_bytes()
    assert not (fresh / "models/reward/helpful").exists()  # only dpo's outputs were pushed and pulled


@pytest.fixture
def s3_server():
    """moto's S3 server on 127.0.0.1 at a free port, stopped at the end of the test."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.slow
def test_s3_remote_round_trip(small_copy, tmp_path, s3_server, monkeypatch):
    import boto3

    # Credentials come from the environment, never from a committed file.
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="models")
    add_remote(small_copy, "s3", "s3://models/alignkit", endpointurl=s3_server)
    assert "testing" not in (small_copy / ".dvc" / "config").read_text()

    dvc(small_copy, "push", env=creds)
    stored = boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket="models")
    assert stored["KeyCount"] > 0
    fresh = clone(small_copy, tmp_path / "fresh")
    dvc(fresh, "pull", env=creds)
    for path in TRACKED:
        assert (fresh / path).read_bytes() == (small_copy / path).read_bytes(), path
