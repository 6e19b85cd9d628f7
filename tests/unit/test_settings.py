"""`localimg serve` refuses unsafe or meaningless settings before anything loads, naming the flag."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from localimg.config import Settings, key_hashes
from localimg.server import check_settings


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"port": 70000}, "--port"),
        ({"port": 0}, "--port"),
        ({"url_ttl_s": 0}, "--url-ttl"),
        ({"url_ttl_s": -5}, "--url-ttl"),
        ({"sse_keepalive_s": 0.0}, "--sse-keepalive"),
        ({"request_timeout_s": -1.0}, "--request-timeout"),
        ({"request_timeout_s": float("nan")}, "--request-timeout"),
        ({"memory_budget_gb": -2.0}, "--memory-budget-gb"),
        ({"batch_window_ms": -1.0}, "--batch-window-ms"),
        ({"drain_timeout_s": float("inf")}, "--drain-timeout"),
        ({"swap_patience_s": -1.0}, "--swap-patience"),
        ({"max_body_mb": 0.0}, "--max-body-mb"),
        ({"max_queue": 0}, "--max-queue"),
        ({"max_batch": 0}, "--max-batch"),
        ({"log_level": "verbose"}, "--log-level"),
        ({"public_url": "not a url"}, "--public-url"),
        ({"public_url": "ftp://images.example.com"}, "--public-url"),
        ({"warmup_sizes": ("big",)}, "--warmup"),
        ({"host": "0.0.0.0"}, "--host"),
    ],
)
def test_bad_settings_name_their_flag(change: dict, flag: str):
    with pytest.raises(ValueError) as info:
        check_settings(dataclasses.replace(Settings(), **change))
    assert str(info.value).startswith(flag) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"request_timeout_s": None, "batch_window_ms": 0.0, "drain_timeout_s": 0.0, "swap_patience_s": 0.0},
        {"public_url": "https://images.example.com/base", "log_level": "WARNING", "port": 65535},
        {"host": "0.0.0.0", "insecure": True},
        {"host": "0.0.0.0", "api_key_hashes": ("0" * 64,)},
    ],
)
def test_good_settings_pass(change: dict):
    check_settings(dataclasses.replace(Settings(), **change))


def test_a_taken_port_fails_at_once_naming_the_address():
    from localimg.server import bind

    first = bind("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        first.listen()
        with pytest.raises(ValueError, match=rf"--host 127.0.0.1 --port {port}: cannot listen there"):
            bind("127.0.0.1", port)
    finally:
        first.close()
    with pytest.raises(ValueError, match="cannot listen there"):
        bind("no-such-host.invalid", 8000)


def test_the_command_line_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch):
    from localimg.cli import serve_settings

    for name in [name for name in os.environ if name.startswith("LOCALIMG_")]:
        monkeypatch.delenv(name)
    assert serve_settings({}) == Settings()
    # Under the SDKs' own 600 s: their clients get the 504 rather than time out and send the job again.
    assert Settings().request_timeout_s is not None and Settings().request_timeout_s < 600


def test_path_options_reach_the_settings_as_paths(tmp_path: Path):
    # serve_settings reads click's parsed options, as `serve` does: a typer older than the floor (a device image's)
    # left them str there unless the options parse with Path themselves.
    from localimg.cli import serve_settings

    keys_file = tmp_path / "keys"
    keys_file.write_text("sk-one\n")
    settings = serve_settings({"config": "models.toml", "api-keys-file": str(keys_file)})
    assert settings.config == Path("models.toml")
    assert settings.api_key_hashes == (hashlib.sha256(b"sk-one").hexdigest(),)


def test_a_keys_file_holds_keys_or_their_digests(tmp_path: Path):
    digest = hashlib.sha256(b"sk-two").hexdigest()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the team's keys\n\n  sk-one  \nsha256:{digest.upper()}\nsk-one\n")
    one = hashlib.sha256(b"sk-one").hexdigest()
    assert key_hashes(["sk-cli", ""], keys_file) == (hashlib.sha256(b"sk-cli").hexdigest(), one, digest)


@pytest.mark.parametrize(
    ("text", "error"),
    [("sk-one\nsha256:abc\n", "keys line 2: not a sha256 hex digest"), (None, "--api-keys-file: cannot read")],
)
def test_a_bad_keys_file_is_one_line_naming_it(tmp_path: Path, text: str | None, error: str):
    keys_file = tmp_path / "keys"
    if text is not None:
        keys_file.write_text(text)
    with pytest.raises(ValueError, match=error):
        key_hashes([], keys_file)
