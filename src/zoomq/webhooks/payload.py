"""What a webhook says of its job: the job's public record, as the API shows it to its owner, less
who owns it and how it reaches its receiver (never the owner's key, the submitter, the URL)."""

from __future__ import annotations

#: Fields a webhook never carries: identities, the URL itself, bookkeeping of workers.
PRIVATE = frozenset({"owner", "submitter", "webhook", "webhook_attempts", "worker_pid", "encode_worker_pid",
                     "heartbeat"})


def public_record(record: dict) -> dict:
    """``record`` (``Jobs.get``) without ``PRIVATE`` fields, with the path of its status."""
    out = {k: v for k, v in record.items() if k not in PRIVATE}
    out["status_url"] = f"/api/jobs/{record['id']}"
    return out
