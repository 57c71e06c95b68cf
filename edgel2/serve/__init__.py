"""``edgel2 serve``: the runtime over HTTP (KServe v2 endpoints, ``/v1/classify``,
``/metrics`` and a page to try the model), on Starlette and uvicorn (``edgel2[serve]``).

Example:
    >>> from edgel2.serve import ServeConfig, run
    >>> run(ServeConfig(model="models/resnet18-int8.onnx"), port=8000)   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os

from edgel2.serve.app import ServeConfig, create_app

CONFIG_ENV = "EDGEL2_SERVE_CONFIG"  # how `--workers N` hands the config to each worker

__all__ = ["ServeConfig", "create_app", "run", "app_from_env"]


def app_from_env():
    """The app of a uvicorn worker process (``--workers N``): its config from the environment."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        graceful_s: float = 10.0, classifier=None) -> None:
    """Serve until SIGTERM or Ctrl-C: stop accepting, finish the requests in flight (at most
    ``graceful_s`` seconds), close the batcher, exit 0. ``workers`` > 1 starts that many
    processes, each with its own model, behind one port. ``classifier``: one already opened
    from ``config`` (one worker only), so that the model is not loaded twice."""
    import signal

    import uvicorn

    config.validate()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler
    # that was there before it; a handler that does nothing makes that a normal exit (0).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    options = dict(host=host, port=port, log_level="warning", access_log=False,
                   timeout_graceful_shutdown=graceful_s)
    if workers == 1:
        uvicorn.run(create_app(config, classifier), **options)
    else:
        os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
        uvicorn.run("edgel2.serve:app_from_env", factory=True, workers=workers, **options)
    signal.signal(signal.SIGTERM, previous)
