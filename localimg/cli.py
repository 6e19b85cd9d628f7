"""`localimg` command line. Every flag can also be set with a LOCALIMG_* environment variable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from localimg.config import Settings, key_hashes

if TYPE_CHECKING:
    from localimg.registry import MattingSpec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="An OpenAI Images API server for local models.",
    context_settings={"max_content_width": 120},  # room for the LOCALIMG_* names in --help
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from localimg import __version__

        typer.echo(f"localimg {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """The options of `localimg` itself (its help text is the Typer app's)."""


_DEFAULTS = Settings()  # the options' defaults are the settings' own: one place for each
# Path options parsed by click itself as Path: `serve` and Ray's `serve_settings` read click's parsed options, where
# a typer older than pyproject's floor leaves them str (it converts only the arguments a command function gets);
# `serve` failed so on the GPU image of 2026-12-06.
_PATH_PARSING: dict[str, Any] = {"parser": Path, "metavar": "<path>"}
ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", envvar="LOCALIMG_CONFIG", help="Path to models.toml.", **_PATH_PARSING)
]


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


@app.command()
def serve(
    context: typer.Context,
    config: ConfigOption = _DEFAULTS.config,
    host: Annotated[str, typer.Option(envvar="LOCALIMG_HOST", help="Address to bind.")] = _DEFAULTS.host,
    port: Annotated[int, typer.Option(envvar="LOCALIMG_PORT", help="Port to bind.")] = _DEFAULTS.port,
    device: Annotated[
        str, typer.Option(envvar="LOCALIMG_DEVICE", help="auto, cuda, cuda:N, mps or cpu.")
    ] = _DEFAULTS.device,
    models: Annotated[
        list[str],
        typer.Option(envvar="LOCALIMG_MODELS", metavar="NAME,...", help="Serve only these models (names or aliases)."),
    ] = [],  # noqa: B006 - typer needs a literal default
    preload: Annotated[
        list[str],
        typer.Option(
            envvar="LOCALIMG_PRELOAD", metavar="NAME,...", help="Models to load at start: default, all, none, or names."
        ),
    ] = ["default"],  # noqa: B006
    public_url: Annotated[
        str | None,
        typer.Option(envvar="LOCALIMG_PUBLIC_URL", help="Base URL clients reach this server at (for image URLs)."),
    ] = None,
    url_ttl: Annotated[
        int, typer.Option(envvar="LOCALIMG_URL_TTL", help="Seconds an image URL stays valid.")
    ] = _DEFAULTS.url_ttl_s,
    max_queue: Annotated[
        int, typer.Option(envvar="LOCALIMG_MAX_QUEUE", help="Jobs queued or running before new ones get 429.")
    ] = _DEFAULTS.max_queue,
    sse_keepalive: Annotated[
        float, typer.Option(envvar="LOCALIMG_SSE_KEEPALIVE", help="Seconds of stream silence before a keep-alive.")
    ] = _DEFAULTS.sse_keepalive_s,
    log_level: Annotated[
        str, typer.Option(envvar="LOCALIMG_LOG_LEVEL", help="debug, info, warning, error or critical.")
    ] = _DEFAULTS.log_level,
    max_batch: Annotated[
        int, typer.Option(envvar="LOCALIMG_MAX_BATCH", help="Images per merged pipeline call (n counts).")
    ] = _DEFAULTS.max_batch,
    batch_window_ms: Annotated[
        float,
        typer.Option(envvar="LOCALIMG_BATCH_WINDOW_MS", help="Wait for compatible requests to merge; 0: no merging."),
    ] = _DEFAULTS.batch_window_ms,
    request_timeout: Annotated[
        float, typer.Option(envvar="LOCALIMG_REQUEST_TIMEOUT", help="Seconds per request before 504; 0: none.")
    ] = _DEFAULTS.request_timeout_s or 0.0,
    memory_budget_gb: Annotated[
        float | None,
        typer.Option(
            envvar="LOCALIMG_MEMORY_BUDGET_GB",
            help="Weights of resident models; default: 3/4 of GPU memory, no CPU limit.",
        ),
    ] = None,
    swap_patience: Annotated[
        float,
        typer.Option(
            envvar="LOCALIMG_SWAP_PATIENCE",
            help="Seconds a job whose model would unload another may wait for jobs on loaded models; 0: never.",
        ),
    ] = _DEFAULTS.swap_patience_s,
    warmup: Annotated[
        list[str],
        typer.Option(
            envvar="LOCALIMG_WARMUP", metavar="WxH,...", help="Sizes generated once per preloaded model at start."
        ),
    ] = [],  # noqa: B006
    drain_timeout: Annotated[
        float, typer.Option(envvar="LOCALIMG_DRAIN_TIMEOUT", help="Seconds SIGTERM waits for jobs to finish.")
    ] = _DEFAULTS.drain_timeout_s,
    api_key: Annotated[
        list[str],
        typer.Option(
            envvar="LOCALIMG_API_KEY", metavar="KEY", help="Accepted API key (repeatable); none: no key needed."
        ),
    ] = [],  # noqa: B006
    api_keys_file: Annotated[
        Path | None,
        typer.Option(
            envvar="LOCALIMG_API_KEYS_FILE", help="File with one API key (or sha256:<hex>) per line.", **_PATH_PARSING
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(envvar="LOCALIMG_INSECURE", help="Allow a non-loopback --host without API keys.")
    ] = False,
    max_body_mb: Annotated[
        float, typer.Option(envvar="LOCALIMG_MAX_BODY_MB", help="Largest request body in MB (413 above).")
    ] = _DEFAULTS.max_body_mb,
    cors_origin: Annotated[
        list[str],
        typer.Option(
            envvar="LOCALIMG_CORS_ORIGIN", metavar="ORIGIN", help="Browser origin allowed by CORS (repeatable)."
        ),
    ] = [],  # noqa: B006
    inject_oom: Annotated[int, typer.Option(envvar="LOCALIMG_INJECT_OOM", hidden=True)] = 0,
    inject_device_failure: Annotated[bool, typer.Option(envvar="LOCALIMG_INJECT_DEVICE_FAILURE", hidden=True)] = False,
) -> None:
    """Run the HTTP server."""
    # The parameters above declare the options; settings_from reads their values from the context, as
    # serve_settings does for the Ray Serve application, so both map options to Settings in one place.
    from localimg.server import run

    with _config_errors():
        run(settings_from(context.params))


def settings_from(options: Mapping[str, Any]) -> Settings:
    """Settings from `serve`'s parsed options (keyed by parameter name). Raises ValueError on a bad keys file."""
    return Settings(
        config=options["config"],
        host=options["host"],
        port=options["port"],
        device=options["device"],
        models=_split(options["models"]),
        preload=_split(options["preload"]),
        public_url=options["public_url"],
        url_ttl_s=options["url_ttl"],
        max_queue=options["max_queue"],
        sse_keepalive_s=options["sse_keepalive"],
        log_level=options["log_level"],
        max_batch=options["max_batch"],
        batch_window_ms=options["batch_window_ms"],
        request_timeout_s=options["request_timeout"] or None,
        memory_budget_gb=options["memory_budget_gb"],
        swap_patience_s=options["swap_patience"],
        warmup_sizes=_split(options["warmup"]),
        drain_timeout_s=options["drain_timeout"],
        api_key_hashes=key_hashes(_split(options["api_key"]), options["api_keys_file"]),
        insecure=options["insecure"],
        max_body_mb=options["max_body_mb"],
        cors_origins=_split(options["cors_origin"]),
        inject_oom=options["inject_oom"],
        inject_device_failure=options["inject_device_failure"],
    )


def serve_settings(arguments: Mapping[str, object]) -> Settings:
    """Settings from `serve`'s options given as a mapping, e.g. {"preload": "all", "api-key": "..."} (names as on
    the command line, with or without dashes), parsed and defaulted (LOCALIMG_* variables included) as the
    command line is. Raises ValueError naming the bad option; server.check_settings checks the values."""
    serve_command = typer.main.get_command(app).commands["serve"]
    flags = {name: param for param in serve_command.params for name in param.opts if name.startswith("--")}
    argv: list[str] = []
    for key, value in arguments.items():
        flag = "--" + str(key).replace("_", "-")
        param = flags.get(flag)
        if param is None or param.hidden:
            raise ValueError(f"unknown option {key!r}; `localimg serve --help` lists them")
        if value is None:  # YAML's null: the option's default
            continue
        if getattr(param, "is_flag", False):
            argv.append(flag if _switch(flag, value) else f"--no-{flag[2:]}")
        else:
            values = value if isinstance(value, (list, tuple)) else [value]
            argv += [part for item in values for part in (flag, str(item))]
    try:
        context = serve_command.make_context("localimg serve", argv)
    except typer.TyperException as exc:  # typer's click errors: the message names the option
        raise ValueError(exc.format_message()) from None
    return settings_from(context.params)


def _switch(flag: str, value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{flag} is a switch: true or false, got {value!r}")


@app.command("models")
def list_models(config: ConfigOption = Path("models.toml")) -> None:
    """List the models the config declares, and whether each one's weights are present and usable (and if not,
    why). Exits 1 when the server could not serve its default model, or would not start (an unusable [matting])."""
    from localimg.backends.loading import weights_problem
    from localimg.registry import Registry

    with _config_errors():
        registry = Registry.load(config)
    cannot_serve = False
    for spec in registry:
        default = " (default)" if spec.name == registry.default_model else ""
        problem = weights_problem(spec)
        status = "present" if problem is None else _WEIGHTS_STATUS.get(problem.code or "", "UNUSABLE")
        typer.echo(f"{spec.name}{default}  family={spec.family}  weights={status}  source: {spec.source.describe()}")
        if spec.aliases:
            typer.echo(f"    aliases: {', '.join(spec.aliases)}")
        if problem is not None:
            typer.echo(f"    why: {problem.message}")
            cannot_serve |= bool(default)
    if registry.matting is not None:
        cannot_serve |= _list_matting(registry.matting)
    if cannot_serve:
        raise typer.Exit(1)


# What `localimg models` says of weights that cannot be served, by the error's code; the `why:` line says more.
_WEIGHTS_STATUS = {
    "model_weights_missing": "MISSING",
    "model_weights_pickled": "REFUSED",
    "model_weights_unsupported": "REFUSED",
    "matting_needs_remote_code": "REFUSED",
    "model_kind_mismatch": "MISMATCH",
    "model_limits_mismatch": "MISMATCH",
}


def _list_matting(spec: MattingSpec) -> bool:
    """Print the [matting] line; True when `serve` would refuse to start on it (present but unusable)."""
    from localimg.backends.matting import check_matting_config, locate_matting_weights
    from localimg.errors import ModelUnavailableError

    source = spec.source.describe()
    try:
        folder = locate_matting_weights(spec)
    except ModelUnavailableError as exc:
        typer.echo(f"[matting]  weights=MISSING  source: {source}")
        typer.echo(f"    why: {exc.message} The built-in key-colour matting is used instead.")
        return False
    try:
        check_matting_config(spec, folder)
    except ModelUnavailableError as exc:
        typer.echo(f"[matting]  weights={_WEIGHTS_STATUS.get(exc.code or '', 'UNUSABLE')}  source: {source}")
        typer.echo(f"    why: {exc.message} `localimg serve` does not start with it.")
        return True
    typer.echo(f"[matting]  weights=present  source: {source}")
    return False


@contextmanager
def _config_errors() -> Iterator[None]:
    """A broken models.toml or flag is the operator's to fix: one clear line, exit status 2, no traceback."""
    from localimg.errors import LocalImgError, RegistryError

    try:
        yield
    except (RegistryError, LocalImgError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def main() -> None:
    app()


if __name__ == "__main__":
    main()
