"""``zoomq worker``: a Celery worker that serves the given models."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid
from pathlib import Path

from zoomq import logs
from zoomq.errors import InvalidParameter
from zoomq.node import sizing

log = logging.getLogger("zoomq.worker")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker that renders queued jobs",
        description="Run a Celery worker. It renders images and keyframes of the models it serves "
        "(queue render.<model>) and encodes segments and videos (queue encode).",
    )
    p.add_argument("--models", nargs="+", type=Path,
                   help="prepared model folders (default $ZOOMQ_MODELS, else every model in $ZOOMQ_MODELS_DIR)")
    p.add_argument("--queues", default="render,encode",
                   help="render, encode or both (default both); or webhooks alone: a light worker (threads, no "
                   "models) that delivers webhooks")
    p.add_argument("--concurrency", default="auto",
                   help="worker processes; PxS: P processes with S render slots each, sharing one compiled "
                   "model per process (with P > 1, P workers NAME.1 to NAME.P, started again if one dies); or "
                   "auto (default): chosen from the cores and memory, and printed")
    p.add_argument("--threads", type=int,
                   help="OpenVINO threads per process, or per slot with slots (default: the cores shared out)")
    p.add_argument("--events", action="store_true", help="send task events, for Flower (celery flower)")
    p.add_argument("--name", help="worker name (default zoomq-<random>)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(run=run, light=True)


def run(args: argparse.Namespace) -> int:
    logs.stacks_on_signal()
    from zoomq.config import WorkerIdentity, settings
    from zoomq.queue import registry
    from zoomq.queue.celery_app import ENCODE_QUEUE, RENDER_QUEUE, render_queue, split_queue

    kinds = [q.strip() for q in args.queues.split(",") if q.strip()]
    if kinds == ["webhooks"]:
        return _webhooks(args)
    if not kinds or set(kinds) - {RENDER_QUEUE, ENCODE_QUEUE}:
        raise InvalidParameter("queues", args.queues, "must be render, encode, render,encode or webhooks")
    s = settings()
    given = sizing.parse_concurrency(args.concurrency)
    if args.threads is not None and args.threads < 1:
        raise InvalidParameter("threads", args.threads, "must be at least 1")
    render = RENDER_QUEUE in kinds
    folders = registry.find_models(s, args.models) if render else list(args.models or s.models)
    os.environ["ZOOMQ_MODELS"] = os.pathsep.join(str(m.resolve()) for m in folders)  # for the pool processes
    models = registry.describe_models(folders)  # fails here, clearly, on a bad folder
    queues = ([render_queue(name) for name in models] if render else []) + (
        [ENCODE_QUEUE] if ENCODE_QUEUE in kinds else [])
    if render and s.guidance_split:  # offers to run half of another worker's guided render
        queues += [split_queue(name) for name in models]
    threads = args.threads or s.threads or None  # the option, else ZOOMQ_THREADS
    slots = (given.slots if given is not None else None) if render else 1  # None: auto
    plan = sizing.for_worker(folders if render else [], s.inference_precision,
                             given.processes if given is not None else None, threads, slots=slots)
    log.info("worker: %s%s", plan.describe(), " (--concurrency auto)" if given is None else "")
    if threads is not None or plan.processes > 1 or plan.slots > 1:
        # One process alone keeps OpenVINO's default (every core, pinned); several share the cores.
        os.environ["ZOOMQ_THREADS"] = str(plan.threads)
    from zoomq.queue.connection import check

    check(s)  # a wrong password or TLS stops here, in one line; an unreachable Redis is waited for
    base = args.name or "zoomq-" + uuid.uuid4().hex[:8]
    if plan.processes > 1 and plan.slots > 1:
        return _group(args, folders, base, plan)
    name = f"{base}@{socket.gethostname()}"
    os.environ.update(WorkerIdentity(name, tuple(queues), (plan.processes, plan.slots)).environment())

    from zoomq.worker.tasks import app  # after the environment is set: the app reads it

    # Slots are threads of one process (a threads pool), so they share its compiled models; a
    # process that dies takes its slots' pieces with it, and their leases lapse for the watchdog to
    # send them again, as for a lost node. Without slots, prefork: a lost child's task is requeued.
    pool = ["--pool=threads", f"--concurrency={plan.slots}"] if plan.slots > 1 else [
        "--pool=prefork", f"--concurrency={plan.processes}"]
    app.worker_main([
        "worker", f"--loglevel={args.loglevel}", *pool,
        "-Q", ",".join(queues), "-n", name, "--without-mingle", "--without-gossip",
        *(["--task-events"] if args.events else []),
    ])
    if plan.slots > 1:
        # Celery has stopped: every piece is acknowledged or given back. The process rendered
        # itself, so its interpreter would now free torch's and OpenVINO's objects one by one
        # (2 s more to stop, measured on the miniature model); the OS frees them at once.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _group(args: argparse.Namespace, folders: list[Path], base: str, plan: sizing.Plan) -> int:
    """P processes with S render slots each: P one-process workers of this command's options, the
    threads fixed by this plan (each sized for the whole node), run and watched by this process."""
    from zoomq.worker.process_group import ProcessGroup

    argv = ["--queues", args.queues, "--concurrency", f"1x{plan.slots}", "--threads", str(plan.threads),
            "--loglevel", args.loglevel, *(["--events"] if args.events else []),
            *(["--models", *map(str, folders)] if folders else [])]
    return ProcessGroup(argv, base, plan.processes).run()


def _webhooks(args: argparse.Namespace) -> int:
    """The webhook worker (``zoomq.webhooks.delivery``): a thread pool, ``--concurrency`` threads (auto: 8)."""
    from zoomq.config import WorkerIdentity, settings
    from zoomq.queue.connection import check

    s = settings()
    given = sizing.parse_concurrency(args.concurrency)
    if given is not None and given.slots > 1:
        raise InvalidParameter("concurrency", args.concurrency, "the webhook worker takes a number of threads")
    threads = given.processes if given is not None else 8
    name = f"{args.name or 'zoomq-' + uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    os.environ.update(WorkerIdentity(name, ("webhooks",), (threads, 1)).environment())
    check(s)
    from zoomq.webhooks.delivery import WEBHOOK_QUEUE, app

    app.worker_main(["worker", f"--loglevel={args.loglevel}", f"--concurrency={threads}", "--pool=threads",
                     "-Q", WEBHOOK_QUEUE, "-n", name, "--without-mingle", "--without-gossip"])
    return 0
