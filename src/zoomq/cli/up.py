"""``zoomq up``: Redis, workers and the web server on this machine, in one command.

``zoomq demo``: the same stack, one image job and one zoom job through it, their results written,
then a clean stop.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from zoomq.errors import InvalidParameter


def _say(message: str) -> None:
    print(f"zoomq: {message}", flush=True)


def _add_stack_options(p: argparse.ArgumentParser, port_help: str) -> None:
    p.add_argument("--models", nargs="+", type=Path,
                   help="prepared model folders (default $ZOOMQ_MODELS, else every model in $ZOOMQ_MODELS_DIR)")
    p.add_argument("--host", default="127.0.0.1", help="address the web server listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help=port_help)
    p.add_argument("--concurrency", default="auto",
                   help="worker processes; PxS: P processes with S render slots each, sharing one compiled model "
                   "per process; or auto (default): chosen from the cores and memory, and printed")
    p.add_argument("--threads", type=int,
                   help="OpenVINO threads per worker process, or per slot (default: the cores shared out)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds running pieces get to finish at a stop before they go back to the queue (default 30)")
    p.add_argument("--web-workers", type=int, default=2, help="gunicorn processes (default 2)")
    p.add_argument("--events", action="store_true", help="workers send task events, for Flower")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="let --host be an address other hosts reach with no API key configured, open to anyone "
                   "(as ZOOMQ_ALLOW_ANONYMOUS=1); without a key it is refused")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run everything on this machine: Redis, workers, web",
        description="Start an embedded Redis (data with AOF in $ZOOMQ_DATA_DIR/redis; with ZOOMQ_REDIS_URL set, "
        "that Redis instead), render workers sized to this machine and the web server on gunicorn. "
        "Ctrl-C or SIGTERM stops it: running pieces finish, or go back to the queue after --grace "
        "seconds; the next zoomq up finishes them.",
    )
    _add_stack_options(p, "web server port (default 8000)")
    p.set_defaults(run=run_up, light=True, own_redis=True)

    p = sub.add_parser(
        "demo",
        help="start the stack, render an image and a zoom through the queue, stop",
        description="Start the one-machine stack (as zoomq up), submit one image job and one short zoom job, "
        "follow them, write OUT/demo.png and OUT/demo-zoom.mp4 from their results, and stop.",
    )
    _add_stack_options(p, "web server port (default 8000; a free one if it is taken)")
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the results (default out)")
    p.set_defaults(run=run_demo, light=True, own_redis=True)


class StopRequests:
    """Counts SIGINT and SIGTERM while in use: the first asks for a clean stop, the second for a quick one."""

    def __init__(self) -> None:
        self.count = 0

    def _handle(self, signum, frame) -> None:
        self.count += 1

    def __enter__(self) -> StopRequests:
        self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _stack(args: argparse.Namespace, port_fallback: bool):
    from zoomq.config import is_set, settings
    from zoomq.node import sizing
    from zoomq.node.stack import Stack, StackOptions
    from zoomq.queue.registry import describe_models, find_models
    from zoomq.web import exposure

    s = settings()
    exposure.check(s, [args.host], "--host", args.allow_anonymous)  # before anything starts
    given = sizing.parse_concurrency(args.concurrency)
    for name in ("threads", "web_workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidParameter(name, value, "must be at least 1")
    if args.grace < 0:
        raise InvalidParameter("grace", args.grace, "must be 0 or more seconds")
    if not 0 < args.port < 65536:
        raise InvalidParameter("port", args.port, "must be between 1 and 65535")
    models = find_models(s, args.models)
    describe_models(models)  # a bad folder fails here, before anything starts
    options = StackOptions(models=models, data_dir=s.data_dir,
                           redis_url=s.redis_url if is_set("ZOOMQ_REDIS_URL") else None,
                           host=args.host, port=args.port, port_fallback=port_fallback,
                           processes=given.processes if given is not None else None,
                           slots=given.slots if given is not None else None,
                           threads=args.threads, grace=args.grace, web_workers=args.web_workers, events=args.events,
                           web_env={"ZOOMQ_ALLOW_ANONYMOUS": "1"} if args.allow_anonymous else {})
    return Stack(options, s, _say)


def _stopping(stack, stops: StopRequests) -> None:
    if stops.count:
        _say(f"stopping: running pieces get up to {stack.options.grace:g} s to finish "
             "(Ctrl-C again sends them back to the queue now)")
    stack.stop(hurry=lambda: stops.count > 1)


def run_up(args: argparse.Namespace) -> int:
    from zoomq.queue.connection import redacted

    stack = _stack(args, port_fallback=False)
    with StopRequests() as stops:
        try:
            stack.start()
            if stack.redis is not None:  # the embedded one: other commands of this user find it, password and all
                elsewhere = f"zoomq submit ... (this user's commands find its Redis and password in {stack.data})"
            else:
                elsewhere = f"export ZOOMQ_REDIS_URL={redacted(stack.redis_url)} ; zoomq submit ..."
            _say(f"up: open {stack.web.url}/ ; Ctrl-C stops. From another shell: {elsewhere}")
            stack.watch(lambda: stops.count > 0)
        finally:
            _stopping(stack, stops)
    _say("stopped")
    return 0


# The demo's two jobs: small enough for the miniature models to finish in seconds.
DEMO_IMAGE: dict[str, Any] = dict(prompt="a lighthouse on a cliff at sunset, oil painting", steps=20, seed=9999)
DEMO_ZOOM: dict[str, Any] = dict(prompt="an endless spiral library, fantasy art", keyframes=4, size=256,
                                  mask_width=64, steps=10, seed=9999, gif=True)


def run_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from zoomq.cli.jobs import follow, write_file
    from zoomq.errors import ModelError, ZoomqError
    from zoomq.model import manifest as mf
    from zoomq.producer import Producer

    stack = _stack(args, port_fallback=True)
    tasks = {m.name: mf.read(m).task for m in stack.models}
    image_model = next((name for name, task in tasks.items() if task == "text-to-image"), None)
    zoom_model = next((name for name, task in tasks.items() if task == "inpainting"), None)
    if image_model is None or zoom_model is None:
        raise ModelError("the demo needs a text-to-image and an inpainting model (make demo builds miniature ones: "
                         "zoomq prepare --tiny [--inpainting] --out models/...)")
    out: Path = args.out
    with StopRequests() as stops:
        try:
            stack.start()
            producer = Producer(replace(stack.settings, redis_url=stack.redis_url))
            image = producer.submit_image(model=image_model, **DEMO_IMAGE)
            zoom = producer.submit_zoom(model=zoom_model, **DEMO_ZOOM)
            _say(f"submitted image job {image} and zoom job {zoom}; the web front end shows them at "
                 f"{stack.web.url}/jobs")
            for job, path in ((image, out / "demo.png"), (zoom, out / "demo-zoom.mp4")):
                if stops.count or follow(producer, job, path) != 0:
                    return 1
            for name, path in (("sidecar.json", out / "demo-zoom.json"), ("result.gif", out / "demo-zoom.gif")):
                data = producer.artifact(zoom, name)
                if data is None:
                    raise ZoomqError(f"zoom job {zoom} is done but its {name} is missing from the artifact store")
                write_file(path, data)
        finally:
            _stopping(stack, stops)
    models = " ".join(str(m) for m in args.models or stack.models)
    _say(f"done: {out / 'demo.png'} and {out / 'demo-zoom.mp4'} (with demo-zoom.gif and its sidecar demo-zoom.json), "
         "rendered by the queue's workers")
    _say(f"to keep the stack running: zoomq up --models {models}   then open http://{args.host}:{args.port}/ "
         "(the demo's jobs are listed at /jobs)")
    return 0
