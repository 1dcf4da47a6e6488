"""After a one-machine stack restarts, what its previous workers held goes back to work at once.

Only for a Redis the stack owns (the embedded one): then every worker that ever used it belonged
to the stack and is gone, so their registry entries are stale, the leases of their running pieces
too, and their unacknowledged tasks will never be acknowledged. Left alone, the leases would lapse
only after ``ZOOMQ_STALE_AFTER`` and the tasks come back only after the visibility timeout (hours).
On a shared Redis this must not run: other nodes' workers are alive.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoomq.config import Settings
from zoomq.queue import connection, registry
from zoomq.queue.job_records import Jobs


@dataclass(frozen=True)
class Recovered:
    leases: int  # pieces whose lease was released (the watchdog sends them again)
    tasks: int   # unacknowledged tasks put back on their queue
    jobs: int    # jobs queued or running, to be finished by the new workers


def recover(s: Settings) -> Recovered:
    """Release stale leases and requeue unacknowledged tasks; call before any worker starts."""
    from zoomq.queue.celery_app import make_app
    from zoomq.worker.lease import RUNNING_PIECES, lease_key

    client = connection.client(s)
    for name in client.smembers(registry.NAMES):  # announced by workers now dead: not alive, not ready
        registry.withdraw(client, connection.text(name))
    fields = [connection.text(f) for f in client.hkeys(RUNNING_PIECES)]
    leases = client.delete(*(lease_key(*f.split("|", 1)) for f in fields)) if fields else 0
    tasks = 0
    with make_app(s).connection_for_write() as broker:
        channel = broker.default_channel
        for tag in client.hkeys(channel.unacked_key):
            channel.qos.restore_by_tag(tag)  # to the end of its queue that is consumed next
            tasks += 1
    return Recovered(leases, tasks, client.zcard(Jobs.QUEUED_SET) + client.zcard(Jobs.RUNNING_SET))
