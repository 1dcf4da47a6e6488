"""``zoomq submit|status|cancel|fetch``: jobs on the queue, from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from zoomq.cli.options import add_image_options, add_zoom_options, check_out, image_options, zoom_options
from zoomq.errors import ZoomqError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="put a job on the queue")
    what = submit.add_subparsers(dest="what", required=True)
    for name, add, help_ in (("image", add_image_options, "one image"), ("zoom", add_zoom_options, "a zoom video")):
        p = what.add_parser(name, help=help_, description=f"Queue {help_}; prints the job id on its first line.")
        add(p)
        p.add_argument("--model", required=True, help="model name (the folder name a worker serves)")
        p.add_argument("--wait", action="store_true", help="follow progress, then write the result to --out")
        p.add_argument("--dry-run", action="store_true",
                       help="check the job and print its work and expected time as JSON; enqueue nothing")
        p.add_argument("--out", type=Path, help="where --wait writes the result")
        p.add_argument("--idempotency-key", metavar="KEY",
                       help="submitting the same job again under the same KEY within 24 h prints the first job's "
                            "id instead of queueing another (a KEY reused for another job is refused)")
        p.add_argument("--webhook", metavar="URL",
                       help="an https URL that receives the job's signed events (docs/api.md, Webhooks)")
        p.set_defaults(run=run_submit, kind=name)

    p = sub.add_parser("status", help="a job's state, progress and ETA")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="the whole record as JSON")
    p.set_defaults(run=run_status)

    p = sub.add_parser("cancel", help="cancel a job (running pieces stop within one step)")
    p.add_argument("job_id")
    p.add_argument("--purge", action="store_true",
                   help="also delete every artifact and upload of the job, even one that has ended")
    p.set_defaults(run=run_cancel)

    p = sub.add_parser("fetch", help="write a finished job's result")
    p.add_argument("job_id")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(run=run_fetch)


def run_submit(args: argparse.Namespace) -> int:
    from zoomq.producer import Producer, idempotency

    suffix = ".png" if args.kind == "image" else ".mp4"
    check_out(args.out, suffix)
    producer = Producer()
    if args.kind == "image":
        options = image_options(args)
        estimate, submit = producer.estimate_image, producer.submit_image
    else:
        options = zoom_options(args)
        options["schedule"] = [vars(c) for c in options.pop("schedule")]
        estimate, submit = producer.estimate_zoom, producer.submit_zoom
    prompt = options.pop("prompt")
    key = idempotency.check_key(args.idempotency_key)
    if args.dry_run:
        print(json.dumps(estimate(prompt, model=args.model, **options), indent=2))
        return 0
    files = {k: Path(v) for k, v in options.items() if k == "init_image" and isinstance(v, str)}  # by content
    hook = {"webhook": args.webhook} if args.webhook is not None else {}
    fp = idempotency.submission_fingerprint(args.kind, args.model, prompt, {**options, **files, **hook})
    job_id, _ = idempotency.submit_once(producer, idempotency.CLI_SCOPE, key, fp,
                                        lambda: submit(prompt, model=args.model, **options, **hook),
                                        "--idempotency-key")
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return follow(producer, job_id, args.out)


def follow(producer, job_id: str, out: Path | None) -> int:
    """Show a job's progress as a bar until it ends, then write its result to ``out``; the exit code."""
    from zoomq.cli.progress import Bar

    bar = Bar("unit")
    shown_warning = [None]

    def update(record: dict) -> None:
        eta = record.get("eta_seconds")
        queue = record.get("queue_position")
        postfix = (f"queue #{queue}" if queue else "") + (f" ETA {eta:.0f}s" if eta is not None else "")
        bar.update(record["work_done"], record["work_total"] or 1, record.get("stage"), postfix.strip())
        if record.get("warning") and record["warning"] != shown_warning[0]:
            shown_warning[0] = record["warning"]
            print(f"\nzoomq: warning: {record['warning']}", file=sys.stderr)

    try:
        record = producer.wait(job_id, update)
    finally:
        bar.close()
    if record["state"] != "done":
        print(f"zoomq: job {job_id} {record['state']}" + (f": {record['error']}" if record.get("error") else ""),
              file=sys.stderr)
        return 1
    if out is not None:
        write_file(out, producer.result(job_id))
        print(out)
    return 0


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all (through a temporary name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def run_status(args: argparse.Namespace) -> int:
    from zoomq.producer import Producer

    record = Producer().status(args.job_id)
    if args.json:
        print(json.dumps(record, indent=2, default=str))
        return 0
    lines = [
        ("job", record["id"]), ("kind", record["kind"]), ("model", record["model"]), ("state", record["state"]),
        ("stage", record.get("stage")), ("progress", f"{record['progress']:.0%}"),
    ]
    if record.get("queue_position"):
        lines.append(("queue position", record["queue_position"]))
    if record["kind"] == "zoom":
        lines.append(("keyframes", f"{record.get('keyframes_done', 0)}/{record.get('keyframes_total')}"))
    if record.get("eta_seconds") is not None:
        lines.append(("eta", f"{record['eta_seconds']:.0f} s"))
    if record.get("worker"):
        age = time.time() - float(record.get("heartbeat") or 0)
        alive = "alive" if record.get("worker_alive") else "NOT SEEN"
        lines.append(("worker", f"{record['worker']} ({alive}; last heartbeat {age:.0f} s ago)"))
    if record.get("split_with"):  # the guidance split: an idle worker ran half of the guided steps
        note = f"; {record['split_note']}" if record.get("split_note") else ""
        lines.append(("split with", f"{record['split_with']} ({record.get('split_piece')}{note})"))
    for key in ("error", "warning", "result"):
        if record.get(key):
            lines.append((key, record[key]))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from zoomq.producer import Producer

    if args.purge:
        answer = Producer().purge(args.job_id)
        print(f"{args.job_id} {'cancelled and ' if answer['cancelled'] else ''}purged")
        return 0
    if Producer().cancel(args.job_id):
        print(f"{args.job_id} cancelled")
        return 0
    raise ZoomqError(f"job {args.job_id} has already ended; nothing to cancel")


def run_fetch(args: argparse.Namespace) -> int:
    from zoomq.producer import Producer

    write_file(args.out, Producer().result(args.job_id))
    print(args.out)
    return 0
