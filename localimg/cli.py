"""`localimg` command line. Every flag can also be set with a LOCALIMG_* environment variable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from localimg.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="An OpenAI Images API server for local models.")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", envvar="LOCALIMG_CONFIG", help="Path to models.toml.")]


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


@app.command()
def serve(
    config: ConfigOption = Path("models.toml"),
    host: Annotated[str, typer.Option(envvar="LOCALIMG_HOST", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="LOCALIMG_PORT", help="Port to bind.")] = 8000,
    device: Annotated[str, typer.Option(envvar="LOCALIMG_DEVICE", help="auto, cuda, cuda:N, mps or cpu.")] = "auto",
    models: Annotated[
        list[str], typer.Option(envvar="LOCALIMG_MODELS", help="Serve only these models (comma-separated).")
    ] = [],  # noqa: B006 - typer needs a literal default
    preload: Annotated[
        list[str],
        typer.Option(envvar="LOCALIMG_PRELOAD", help="Models to load at start: default, all, none, or names."),
    ] = ["default"],  # noqa: B006
    public_url: Annotated[
        str | None,
        typer.Option(envvar="LOCALIMG_PUBLIC_URL", help="Base URL clients reach this server at (for image URLs)."),
    ] = None,
    url_ttl: Annotated[int, typer.Option(envvar="LOCALIMG_URL_TTL", help="Seconds an image URL stays valid.")] = 3600,
    max_queue: Annotated[
        int, typer.Option(envvar="LOCALIMG_MAX_QUEUE", help="Jobs queued or running before 503.")
    ] = 64,
    sse_keepalive: Annotated[
        float, typer.Option(envvar="LOCALIMG_SSE_KEEPALIVE", help="Seconds of stream silence before a keep-alive.")
    ] = 10.0,
    log_level: Annotated[str, typer.Option(envvar="LOCALIMG_LOG_LEVEL", help="debug, info, warning.")] = "info",
) -> None:
    """Run the HTTP server."""
    from localimg.server import run

    with _config_errors():
        run(
            Settings(
                config=config,
                host=host,
                port=port,
                device=device,
                models=_split(models),
                preload=_split(preload),
                public_url=public_url,
                url_ttl_s=url_ttl,
                max_queue=max_queue,
                sse_keepalive_s=sse_keepalive,
                log_level=log_level,
            )
        )


@app.command("models")
def list_models(config: ConfigOption = Path("models.toml")) -> None:
    """List the models the config declares, and whether each one's weights are present."""
    from localimg.backends.loading import weights_present
    from localimg.registry import Registry

    with _config_errors():
        registry = Registry.load(config)
    for spec in registry:
        default = " (default)" if spec.name == registry.default_model else ""
        status = "present" if weights_present(spec) else "MISSING"
        typer.echo(f"{spec.name}{default}  family={spec.family}  weights={status}  source: {spec.source.describe()}")
        if spec.aliases:
            typer.echo(f"    aliases: {', '.join(spec.aliases)}")


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
