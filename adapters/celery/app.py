"""The Celery application both sides share: broker, result backend and the reliability settings.

Late acknowledgement and a prefetch of one, so a job whose worker dies is handed to another worker
(immediately when a pool process dies; after `queue.visibility_timeout` when a whole machine
vanishes). Messages are JSON (`Job.to_dict`, images base64-encoded): nothing is unpickled from the
network.
"""
from __future__ import annotations

import logging

from celery import Celery

from .settings import QueueSettings

TASK_NAME = "artchain.run_job"
PROGRESS_STATE = "PROGRESS"
OUTAGE_SECONDS = 60  # how long a client or worker waits out a broker that is gone, retrying about once a second
# Celery sleeps a random 0..max between result-backend retries ("full jitter"), 0.5 s on average
# with a 1 s cap, so waiting out OUTAGE_SECONDS takes twice as many retries. With one retry per
# second, a worker on a loaded machine gave up after about 30 s and failed a job it had computed.
BACKEND_RETRIES = 2 * OUTAGE_SECONDS


class _OneLineRetries(logging.Filter):
    """Celery logs each retry of a result-backend operation with a full traceback; during a broker
    restart that is dozens of tracebacks for an expected, handled condition. One line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            record.args = ()
            record.exc_info = record.exc_text = None
        return True


def make_app(queue: QueueSettings) -> Celery:
    retries = logging.getLogger("celery.backends.base")
    if not any(isinstance(existing, _OneLineRetries) for existing in retries.filters):
        retries.addFilter(_OneLineRetries())
    app = Celery("artchain", broker=queue.broker_url, backend=queue.result_backend or queue.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue.name,
        task_time_limit=queue.time_limit,
        task_soft_time_limit=max(1, queue.time_limit - 5),
        result_expires=queue.result_expires,
        broker_transport_options={
            "visibility_timeout": queue.visibility_timeout,
            # kombu scans for jobs of vanished workers every 10 x 10 s by default; scanning a few
            # times per visibility timeout hands them on soon after it expires, at the cost of one
            # small Redis query per scan.
            "unacked_restore_interval": max(1, min(10, queue.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": queue.visibility_timeout},
        broker_connection_retry_on_startup=True,
        # A broker or backend restart must cost time, not jobs: publishing, result reads and writes,
        # and the worker's consumer reconnect with a bounded backoff (about OUTAGE_SECONDS).
        broker_connection_retry=True,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": OUTAGE_SECONDS, "interval_start": 0.5, "interval_step": 0.5,
                                   "interval_max": 1.0},
        result_backend_always_retry=True,
        result_backend_max_retries=BACKEND_RETRIES,
        result_backend_base_sleep_between_retries_ms=500,
        result_backend_max_sleep_between_retries_ms=1000,
        worker_hijack_root_logger=False,
    )
    return app
