"""``edgel2 serve``: the runtime over HTTP (KServe v2 endpoints, ``/v1/classify``,
``/metrics`` and a page to try the model), on Starlette and uvicorn (``edgel2[serve]``).

Examples:
    >>> from edgel2.serve import ServeConfig, run
    >>> run(ServeConfig(model="models/resnet18-int8.onnx"), port=8000)   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from edgel2.runtime import Classifier
from edgel2.serve.config import ServeConfig, open_model

CONFIG_ENV = "EDGEL2_SERVE_CONFIG"  # how `--workers N` hands the config to each worker

__all__ = ["ServeConfig", "create_app", "open_model", "run", "app_from_env"]


def __getattr__(name: str) -> Any:
    """``create_app`` is imported on first use: ServeConfig and open_model need no serve extra."""
    if name == "create_app":
        from edgel2.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def app_from_env():
    """The app of a uvicorn worker process (``--workers N``): its config from the environment.

    Returns:
        :func:`create_app` of the :class:`ServeConfig` that :func:`run` put in
        ``$EDGEL2_SERVE_CONFIG``.

    Examples:
        >>> app = app_from_env()        # doctest: +SKIP
    """
    from edgel2.serve.app import create_app
    from edgel2.serve.protocol import GuardedHttpToolsProtocol

    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    GuardedHttpToolsProtocol.configure(config.client_timeout_s)
    return create_app(config)


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        classifier: Classifier | None = None,
        on_listening: Callable[[str], None] | None = None, check_model: bool = True) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop accepting and finish the requests in flight.

    Requests still running ``config.grace_s`` seconds after the signal get a JSON 503; then
    the batcher is closed and the call returns. The port is bound before anything else is
    started: a port in use is one :class:`~edgel2.errors.EdgeL2Error`.

    Args:
        config: Every serving knob (:class:`~edgel2.serve.config.ServeConfig`).
        host: The address to listen on.
        port: The port; 0 for one the system chooses (``on_listening`` gets it).
        workers: Processes, each with its own model, behind one port.
        classifier: One already opened from ``config`` (one worker only), so that the model is
            not loaded twice.
        on_listening: Called with the base URL once the socket is bound.
        check_model: With several workers, open the model here once first, so that a bad file
            is one error instead of workers failing over and over (False: the caller did).

    Examples:
        >>> run(ServeConfig(model="models/"), port=8000)     # doctest: +SKIP
    """
    import signal

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from edgel2.serve.app import create_app
    from edgel2.serve.protocol import GuardedHttpToolsProtocol

    config.validate()
    if workers > 1 and check_model:  # the model opens, or this is the one error
        open_model(config)
    sock = _listen(host, port)
    if on_listening is not None:
        bound = sock.getsockname()[1]
        on_listening(f"http://{f'[{host}]' if ':' in host else host}:{bound}")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler
    # that was there before it. This one ends run() normally, then or before uvicorn starts.
    previous = signal.signal(signal.SIGTERM, _stop)
    GuardedHttpToolsProtocol.configure(config.client_timeout_s)
    options: dict[str, Any] = dict(log_level="warning", access_log=False,
                                   http=GuardedHttpToolsProtocol,
                   timeout_graceful_shutdown=config.grace_s)
    try:
        if workers == 1:
            uvicorn.Server(uvicorn.Config(create_app(config, classifier), **options)).run(
                sockets=[sock])
        else:
            os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
            Multiprocess(uvicorn.Config("edgel2.serve:app_from_env", factory=True,
                                        workers=workers, **options), sockets=[sock]).run()
    except _Stopped:
        pass
    finally:
        sock.close()
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    pass


def _stop(*_) -> None:
    raise _Stopped()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds: address reuse, IPv6 for a host with
    a colon); a port in use or an address that is not this machine's is one line."""
    from edgel2.errors import EdgeL2Error

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # in use, not an address of this machine, a name that resolves not
        sock.close()
        raise EdgeL2Error(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)  # uvicorn's backlog: clients queue from now on, even during start-up
    sock.set_inheritable(True)
    return sock
