"""The scale-out adapter: jobs travel through Celery (Redis) to `artchain worker` processes.

`executor` is the client side (an `Executor` like the local one), `worker` the side that runs jobs.
"""
