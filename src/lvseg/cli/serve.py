"""``lvseg serve``: the clinical app (HTTP API and web page) around one trained checkpoint."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Optional

import typer

from lvseg.errors import LvsegError
from lvseg.inference.backend_choice import BACKEND_HELP, CHECKPOINT_HELP
from lvseg.inference.threshold import THRESHOLD_HELP, check_threshold

logger = logging.getLogger(__name__)

_MISSING_EXTRA = (
    "the web service needs the 'serve' extra (fastapi, uvicorn, python-multipart, reportlab, pydicom, "
    "swagger-ui-py); install it with: pip install 'lvseg[serve]'"
)


def read_api_key(path: Path) -> str:
    """The API key in ``path`` (surrounding whitespace removed); refuses a missing or empty file."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as error:
        raise LvsegError(f"API key file {path} does not exist") from error
    except (OSError, UnicodeDecodeError) as error:
        raise LvsegError(f"cannot read the API key file {path}: {error}") from error
    if not key:
        raise LvsegError(f"API key file {path} is empty; put the key on its first line")
    if len(key) < 16:
        logger.warning("the API key in %s is shorter than 16 characters; use a long random key", path)
    try:
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            logger.warning("the API key file %s is readable by other users; consider chmod 600", path)
    except OSError:
        pass
    return key


def _load_segmenter(checkpoint: Path, device: str | None, backend: str = "auto") -> Any:
    """Load the model once (``lvseg.inference.load_model``; checkpoints load with weights_only) and warm it up,
    so the first request is not the slow one."""
    from lvseg.inference import load_model

    segmenter = load_model(checkpoint, device=device, backend=backend)
    segmenter.warm_up()
    return segmenter


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`LvsegError` when ``host:port`` cannot be bound (before any model is loaded)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise LvsegError(
            f"cannot serve on {host}:{port}: {error.strerror or error} (another server may be using "
            "the port: choose one with --port)"
        ) from None


def build_app(
    checkpoint: Path,
    device: str | None,
    api_key_file: Path | None,
    read_timeout: float = 30.0,
    allowed_hosts: list[str] | None = None,
    backend: str = "auto",
    threshold: float | None = None,
) -> Any:
    """The FastAPI app for ``lvseg serve``; raises :class:`LvsegError` when the serve extra is missing.

    ``allowed_hosts``: the Host names accepted (:func:`lvseg.serving.security.allowed_hosts_for`); None: the
    library's default (loopback names only without an API key). ``threshold``: None, the model's declared one.
    """
    try:
        from lvseg.serving.app import create_app
    except ImportError as error:
        raise LvsegError(_MISSING_EXTRA) from error
    if not checkpoint.is_file() and not checkpoint.is_dir():
        raise LvsegError(
            f"checkpoint {checkpoint} does not exist (give a .ckpt file or a folder written by `lvseg export`)"
        )
    if threshold is not None:  # before the model loads
        check_threshold(threshold, "--threshold")
    api_key = read_api_key(api_key_file) if api_key_file is not None else None
    segmenter = _load_segmenter(checkpoint, device, backend)
    return create_app(
        segmenter, api_key=api_key, read_timeout_s=read_timeout, allowed_hosts=allowed_hosts, threshold=threshold
    )


def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; loopback only unless told otherwise."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    api_key_file: Optional[Path] = typer.Option(
        None, "--api-key-file", help="File holding an API key; every /api route then needs it in X-API-Key."
    ),
    device: Optional[str] = typer.Option(None, help="'cpu', 'cuda' or 'cuda:N'; default: CUDA if available."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    read_timeout: float = typer.Option(
        30.0, "--read-timeout", min=1.0, help="Seconds an upload may send nothing before it is answered 408."
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="A host name clients may use to reach the server (repeatable). Without "
        "--api-key-file only the --host address, loopback names and these are accepted; '*' accepts any.",
    ),
) -> None:
    """Serve the web page and the HTTP API (/docs describes it) for one checkpoint."""
    try:
        import uvicorn

        from lvseg.serving.connections import guarded_h11_protocol
        from lvseg.serving.security import ANY_HOST, allowed_hosts_for, is_loopback
    except ImportError as error:
        raise LvsegError(_MISSING_EXTRA) from error
    if not is_loopback(host) and api_key_file is None:
        logger.warning("listening on %s without --api-key-file: anyone on the network can use the service", host)
    check_port_free(host, port)
    hosts = allowed_hosts_for(host, api_key_file is not None, allowed_host)
    if hosts != ANY_HOST and not is_loopback(host):
        logger.info("accepting the Host names %s (add others with --allowed-host)", ", ".join(hosts))
    app = build_app(
        checkpoint,
        device,
        api_key_file,
        read_timeout=read_timeout,
        allowed_hosts=hosts,
        backend=backend,
        threshold=threshold,
    )
    logger.info("serving on http://%s:%d (API docs at /docs)", host, port)
    uvicorn.run(  # uvicorn's h11 protocol, closing connections whose request headers never complete
        app,
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        timeout_keep_alive=5,
        http=guarded_h11_protocol(),
    )


def register(app: typer.Typer) -> None:
    """Add ``lvseg serve`` to the CLI."""
    app.command("serve")(serve)
