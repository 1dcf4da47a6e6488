"""``zoomq worker``: a Celery worker that serves the given models."""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from pathlib import Path

from zoomq.errors import InvalidParameter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker that renders queued jobs",
        description="Run a Celery worker. It renders images and keyframes of the models it serves "
        "(queue render.<model>) and encodes segments and videos (queue encode).",
    )
    p.add_argument("--models", nargs="+", type=Path, help="prepared model folders (default $ZOOMQ_MODELS)")
    p.add_argument("--queues", default="render,encode", help="render, encode or both (default both)")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--threads", type=int, help="OpenVINO threads per process (default: all cores)")
    p.add_argument("--name", help="worker name (default zoomq-<random>)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(run=run, light=True)


def run(args: argparse.Namespace) -> int:
    from zoomq.config import settings
    from zoomq.worker import registry
    from zoomq.worker.app import ENCODE_QUEUE, RENDER_QUEUE, render_queue

    kinds = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not kinds or set(kinds) - {RENDER_QUEUE, ENCODE_QUEUE}:
        raise InvalidParameter("queues", args.queues, "must be render, encode or render,encode")
    if args.concurrency < 1:
        raise InvalidParameter("concurrency", args.concurrency, "must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidParameter("threads", args.threads, "must be at least 1")
        os.environ["ZOOMQ_THREADS"] = str(args.threads)
    if args.models:
        os.environ["ZOOMQ_MODELS"] = os.pathsep.join(str(m.resolve()) for m in args.models)
    models = registry.describe_models(list(settings().models))  # fails here, clearly, on a bad folder
    if RENDER_QUEUE in kinds and not models:
        raise InvalidParameter("models", None, "a render worker needs --models (prepared model folders)")
    queues = ([render_queue(name) for name in models] if RENDER_QUEUE in kinds else []) + (
        [ENCODE_QUEUE] if ENCODE_QUEUE in kinds else [])
    name = f"{args.name or 'zoomq-' + uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    os.environ.update(ZOOMQ_WORKER_NAME=name, ZOOMQ_WORKER_QUEUES=",".join(queues),
                      ZOOMQ_WORKER_CONCURRENCY=str(args.concurrency))

    from zoomq.worker.tasks import app  # after the environment is set: the app reads it

    app.worker_main([
        "worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}", "--pool=prefork",
        "-Q", ",".join(queues), "-n", name, "--without-mingle", "--without-gossip",
    ])
    return 0
