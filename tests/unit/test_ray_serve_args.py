"""The Ray Serve application's arguments: `localimg serve`'s options, parsed as the command line parses them,
plus the replicas' shape; every mistake is one clear ValueError before a replica starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from localimg.cli import serve_settings
from localimg.ray_serve import ReplicaShape, parse_args
from localimg.ray_serve import app as ray_serve_app

CONFIG = Path(__file__).resolve().parents[2] / "models.toml"


def test_options_are_parsed_as_on_the_command_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOCALIMG_MAX_BATCH", "3")  # the environment still counts, as for the CLI
    settings = serve_settings(
        {"config": str(CONFIG), "preload": "all", "models": ["flux-dev", "sdxl"], "api_key": "sk-1,sk-2",
         "max-queue": "12", "insecure": "true", "warmup": "1024x1024"}
    )  # fmt: skip
    assert settings.preload == ("all",)
    assert settings.models == ("flux-dev", "sdxl")
    assert len(settings.api_key_hashes) == 2
    assert settings.max_queue == 12 and settings.max_batch == 3
    assert settings.insecure is True
    assert settings.warmup_sizes == ("1024x1024",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"frobnicate": 1}, "unknown option 'frobnicate'"),
        ({"inject-oom": 2}, "unknown option 'inject-oom'"),  # a hidden testing flag stays hidden
        ({"max-queue": "many"}, "'--max-queue'"),
        ({"max-queue": 0}, "--max-queue must be at least 1"),
        ({"port": 9000}, "http_options.port"),
        ({"host": "0.0.0.0"}, "http_options.host"),
        ({"replicas": 0}, "replicas must be a whole number"),
        ({"replicas": 2.5}, "replicas must be a whole number"),
        ({"replicas": "several"}, "replicas must be a whole number >= 1 or auto"),
        ({"replicas": -1}, "replicas must be a whole number >= 1 or auto"),
        ({"gpus-per-replica": -1}, "gpus-per-replica must be a number >= 0"),
        ({"cpus_per_replica": "nan"}, "cpus-per-replica must be a number >= 0"),
        ({"preload": "no-such-model"}, "--preload: unknown model 'no-such-model'"),
        ({"gpus-per-replica": 2}, "gpus-per-replica must be at most 1"),
        ({"device": "cuda:1"}, "use device=cuda"),  # Ray hands each replica one GPU, its cuda:0
        ({"device": "cuda:1", "gpus-per-replica": 0}, "use device=cuda"),
        ({"device": "tpu"}, "--device: unknown device 'tpu'"),  # not only when each replica starts, and fails
        ({"device": "cpu", "gpus-per-replica": 0.5}, "gpus-per-replica must be 0 with device=cpu"),
        ({"device": "cuda", "gpus-per-replica": 0}, "device=cuda needs gpus-per-replica > 0"),
        ({"insecure": "ture"}, "--insecure is a switch: true or false"),
    ],
)
def test_mistakes_are_one_clear_error(args: dict, message: str):
    with pytest.raises(ValueError) as info:
        parse_args({"config": str(CONFIG), **args})
    assert message in str(info.value)


def test_replica_shape_defaults_to_one_gpu_each_unless_the_device_is_not_cuda():
    assert parse_args({"config": str(CONFIG)})[1] == ReplicaShape(replicas=1, cpus=1, gpus=1)
    _, shape = parse_args({"config": str(CONFIG), "device": "cpu", "replicas": "3", "cpus-per-replica": 0.5})
    assert shape == ReplicaShape(replicas=3, cpus=0.5, gpus=0)
    assert parse_args({"config": str(CONFIG), "replicas": "auto"})[1].replicas == "auto"


def test_a_cpu_device_from_the_environment_also_means_no_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOCALIMG_DEVICE", "cpu")
    assert parse_args({"config": str(CONFIG)})[1].gpus == 0
    assert parse_args({"config": str(CONFIG), "device": "auto", "gpus-per-replica": 0.5})[1].gpus == 0.5


def test_the_builder_raises_one_error_without_the_chain_behind_it(tmp_path: Path):
    """Serve prints the builder's traceback: a chained one ("the above exception was the direct cause") doubles it."""
    broken = tmp_path / "models.toml"
    broken.write_text("[models.x\n")
    with pytest.raises(ValueError) as info:
        ray_serve_app({"config": str(broken)})
    assert "not valid TOML" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_null_means_the_default_and_a_tuple_is_a_list():
    settings = serve_settings(
        {"config": str(CONFIG), "public-url": None, "memory-budget-gb": None, "models": ("flux-dev", "sdxl")}
    )
    assert settings.public_url is None and settings.memory_budget_gb is None
    assert settings.models == ("flux-dev", "sdxl")


def test_the_docker_images_host_does_not_apply_to_replicas(monkeypatch: pytest.MonkeyPatch):
    """LOCALIMG_HOST=0.0.0.0 (set in Dockerfile.cuda) would demand an API key for an address Ray never binds."""
    monkeypatch.setenv("LOCALIMG_HOST", "0.0.0.0")
    monkeypatch.setenv("LOCALIMG_PORT", "not-a-port")  # not read at all
    settings, _ = parse_args({"config": str(CONFIG)})
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(("value", "expected"), [("true", True), (True, True), ("false", False), (False, False)])
def test_switches_take_true_and_false(value: object, expected: bool):
    assert serve_settings({"config": str(CONFIG), "insecure": value}).insecure is expected


def test_the_config_is_named_absolutely_for_replicas_elsewhere(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(CONFIG.parent)
    settings, _ = parse_args({"config": "models.toml"})
    assert settings.config == CONFIG
