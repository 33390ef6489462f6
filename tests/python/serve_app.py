"""Ray Serve app behind serve-guard's public-mode proxy in the end-to-end tests.

A FastAPI ingress at route /echo that reports exactly what reached it, so the tests can prove the
serve token never gets past the proxy:

  GET|POST /echo/                         -> JSON: method, path, query, headers, cookies, body
  GET  /echo/stream/{gate}                -> chunked stream; chunk N+1 waits for a release
  POST /echo/release/{gate}               -> lets the stream send its next chunk
  GET  /echo/ticks?n=&delay=              -> n chunks, `delay` seconds apart
  WS   /echo/ws                           -> echoes every text message
  GET  /echo/docs                         -> Swagger UI from local assets (the CDN is unreachable)

The gated stream proves incremental delivery by causality, not timing: the client receives chunk 0
before it releases chunk 1, which a buffering proxy could never deliver.

Run: python serve_app.py --host 0.0.0.0 --port 8000 [--temp-dir DIR]. Stops cleanly on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import importlib.resources
import signal
import sys
import threading

import ray
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from ray import serve

ROUTE_PREFIX = "/echo"
APP_NAME = "echo"
# A gated stream gives up after this long without a release, so a failed test never leaves a
# request hanging in the replica.
GATE_TIMEOUT_S = 60.0
GATE_POLL_S = 0.02
MAX_GATED_CHUNKS = 100
MAX_TICKS = 1000

# Swagger UI 5 (OpenAPI 3.1, which FastAPI writes) from the swagger-ui-py wheel: only its static
# assets are used, served by the app itself since the CDN FastAPI links to is unreachable.
SWAGGER_UI_ASSETS = importlib.resources.files("swagger_ui") / "static"

app = FastAPI(title="serve-guard echo", docs_url=None, redoc_url=None)
app.mount("/static", StaticFiles(directory=str(SWAGGER_UI_ASSETS)), name="static")

# Gate name -> chunks released so far. The stream and the release run in the same replica; a
# plain dict polled with short sleeps works whichever event loop Serve runs user code on.
_released: dict[str, int] = {}


def _root(request: Request) -> str:
    # Serve mounts the app under its route prefix and passes it as the ASGI root_path.
    return request.scope.get("root_path", "") or ""


async def _echo(request: Request) -> dict:
    body = await request.body()
    return {
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.url.query,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
        "cookies": dict(request.cookies),
        "body": body.decode("utf-8", errors="replace"),
        "body_len": len(body),
    }


@app.get("/")
async def echo_get(request: Request) -> dict:
    return await _echo(request)


@app.post("/")
async def echo_post(request: Request) -> dict:
    return await _echo(request)


@app.get("/stream/{gate}")
async def stream(gate: str) -> StreamingResponse:
    chunks = 3
    _released[gate] = 0

    async def gen():
        try:
            for i in range(chunks):
                if i > 0:
                    waited = 0.0
                    while _released.get(gate, 0) < i:
                        if waited >= GATE_TIMEOUT_S:
                            yield f"timeout waiting for release {i}\n"
                            return
                        await asyncio.sleep(GATE_POLL_S)
                        waited += GATE_POLL_S
                yield f"chunk {i}\n"
            yield "done\n"
        finally:
            _released.pop(gate, None)

    return StreamingResponse(gen(), media_type="text/plain")


@app.post("/release/{gate}")
async def release(gate: str) -> dict:
    if gate not in _released:
        return {"released": False}
    _released[gate] = min(_released[gate] + 1, MAX_GATED_CHUNKS)
    return {"released": True, "count": _released[gate]}


@app.get("/ticks")
async def ticks(n: int = 5, delay: float = 0.2) -> StreamingResponse:
    n = max(0, min(n, MAX_TICKS))
    delay = max(0.0, min(delay, 5.0))

    async def gen():
        for i in range(n):
            yield f"data: tick {i}\n\n"
            await asyncio.sleep(delay)

    return StreamingResponse(gen(), media_type="text/event-stream")


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_text(f"echo: {message}")
    except WebSocketDisconnect:
        pass


@app.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title="serve-guard echo - Swagger UI",
        swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon-32x32.png",
    )


@serve.deployment
@serve.ingress(app)
class Echo:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--temp-dir", help="Ray's session directory (one per test run)")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=args.temp_dir)
    # After ray.init: it installs its own SIGTERM handler, which would kill the driver without
    # shutting Serve down.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(Echo.bind(), name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
        print(f"serve_app: ready on {args.host}:{args.port}{ROUTE_PREFIX}", flush=True)
        while not stop.wait(1.0):  # a timed wait keeps the signal handler responsive
            pass
        print("serve_app: stopping", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
