"""The Celery application both sides share: broker, result backend and the reliability settings.

Late acknowledgement and a prefetch of one, so a job whose worker dies is handed to another worker
(immediately when a pool process dies; after `queue.visibility_timeout` when a whole machine
vanishes). Messages are JSON (`Job.to_dict`, images base64-encoded): nothing is unpickled from the
network.
"""
from __future__ import annotations

from celery import Celery

from .settings import QueueSettings

TASK_NAME = "artchain.run_job"
PROGRESS_STATE = "PROGRESS"


def make_app(queue: QueueSettings) -> Celery:
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
        worker_hijack_root_logger=False,
    )
    return app
