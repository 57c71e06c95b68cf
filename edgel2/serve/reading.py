"""Reading a request within the server's limits: the body counted byte by byte however it
is framed, a v2 tensor parsed and checked, the uploaded files of a form, and the JSON error
every refusal answers with (the KServe v2 shape, ``{"error": message}``)."""
from __future__ import annotations

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class TooLarge(Exception):
    """A body over the limit (answered with 413)."""


class TooMany(ValueError):
    """More images in one request than the limit (answered with 413)."""


class BodyLimit:
    """ASGI middleware: every byte of a request body, however it is framed (Content-Length,
    chunked, multipart parts), counts against the limit; past it, reading raises TooLarge,
    which the handlers answer with 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = 0

        async def counted():
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise TooLarge()
            return message

        return await self.app(scope, counted, send)


def refuse_declared_over(request: Request, max_body: int) -> None:
    """413 before reading a body whose Content-Length already says it is over the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise TooLarge()


async def disconnected(request: Request) -> None:
    """Return when the client has gone (the body was read already, so the next ASGI message
    can only be the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def v2_request(raw: bytes, height: int, width: int, max_images: int
                ) -> tuple[str | None, np.ndarray]:
    """The id and uint8 images of a v2 infer request body: one input, datatype UINT8, shape
    [N, height, width, 3] with N <= ``max_images``, data flat (row-major) or nested. Runs in
    the pool: parsing 16 MiB of JSON takes the better part of a second."""
    import json

    try:
        body = json.loads(raw)
    except RecursionError:
        raise ValueError("the body is not JSON edgel2 reads: nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"the body is not JSON: {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) \
            or len(body["inputs"]) != 1 or not isinstance(body["inputs"][0], dict):
        raise ValueError('a v2 infer request has "inputs": [one tensor]')
    tensor = body["inputs"][0]
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if datatype != "UINT8":
        raise ValueError(f'input datatype must be "UINT8", got {datatype!r}')
    if not (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and shape[0] >= 1 and shape[1:] == [height, width, 3]):
        raise ValueError(f"input shape must be [N, {height}, {width}, 3] with N >= 1, got {shape!r}")
    if shape[0] > max_images:
        raise TooMany(f"{shape[0]} images in one request; the limit is {max_images} "
                       "(--max-images)")
    try:
        data = np.asarray(tensor.get("data"))
    except (ValueError, TypeError):
        data = np.asarray(None)
    if data.dtype.kind not in "iu" or data.size != int(np.prod(shape)) \
            or data.min() < 0 or data.max() > 255:
        raise ValueError(f"input data must be {int(np.prod(shape))} whole numbers in 0..255")
    images = data.astype(np.uint8).reshape(shape)
    request_id = body.get("id")
    return (str(request_id) if request_id is not None else None), images


async def uploaded_files(request: Request, read_body, max_body: int, max_images: int):
    """(filename, bytes) of each uploaded file: every file part of a multipart form, or the
    raw body as one image; a JSON error response if there is none or too many."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        refuse_declared_over(request, max_body)
        try:
            # one more than allowed: then the count below answers, with the option's name
            form = await request.form(max_files=max_images + 1, max_fields=max_images + 1,
                                      max_part_size=max_body)
        except (ClientDisconnect, TooLarge):
            raise
        except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
            return error_response(400, f"cannot read the multipart form: {e}")
        files = [(v.filename or key, await v.read()) for key, v in form.multi_items()
                 if not isinstance(v, str)]
        await form.close()
    else:
        body = await read_body(request)
        files = [("body", body)] if body else []
    if not files:
        return error_response(400, "no image: send files as multipart/form-data, or one image as the body")
    if len(files) > max_images:
        return error_response(413, f"{len(files)} files in one request; the limit is {max_images} "
                           "(--max-images)")
    return files
