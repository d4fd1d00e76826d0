"""Remote credentials live in the environment or .dvc/config.local, never in a committed file."""

import re
import subprocess

from tests.conftest import REPO

# Option names DVC remotes (S3, GCS, Azure, SSH, HTTP, WebDAV, ...) take credentials under.
SECRET_OPTION = re.compile(
    r"^\s*(access_key_id|secret_access_key|session_token|password|ask_password_value|account_key|sas_token|"
    r"connection_string|client_secret|key_secret|token|gdrive_client_secret|credentialpath|keyfile)\s*[=:]\s*\S.*$",
    re.I | re.M,
)
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".cfg", ".ini", ".json", ".env", ".conf")


def secrets_in(text):
    return [m.group(0).strip() for pattern in (SECRET_OPTION, AWS_KEY_ID, PRIVATE_KEY) for m in pattern.finditer(text)]


def test_the_detector_finds_keys_and_passes_plain_settings():
    config = (
        "[core]\n    remote = store\n['remote \"store\"']\n    url = s3://bucket/models\n"
        "    endpointurl = http://127.0.0.1:9000\n"
    )
    assert secrets_in(config) == []
    assert secrets_in(config + "    secret_access_key = wJalrXUtnFEMI/K7MDENG\n") == [
        "secret_access_key = wJalrXUtnFEMI/K7MDENG"
    ]
    assert secrets_in("key: AKIAIOSFODNN7EXAMPLE\n") == ["AKIAIOSFODNN7EXAMPLE"]
    assert secrets_in("password: hunter2\n") == ["password: hunter2"]


def test_no_committed_config_file_holds_a_credential():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    configs = [
        name
        for name in tracked
        if name.startswith(".dvc/") or name.endswith(CONFIG_SUFFIXES) or "config" in name.rsplit("/", 1)[-1]
    ]
    assert ".dvc/config" in configs and "params.yaml" in configs
    found = {name: secrets_in((REPO / name).read_text(errors="replace")) for name in configs}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_local_dvc_config_is_never_committed():
    """`dvc remote modify --local` writes credentials to .dvc/config.local, which git ignores."""
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO)
    assert ignored.returncode == 0
