"""Flower configuration: `celery -A workers flower --conf=deploy/flower/flowerconfig.py --basic-auth=user:password`.

Flower serves its Prometheus metrics (/metrics) without checking credentials, even with basic
auth or OAuth on: the handler lacks the `authenticated` decorator that every page has (flower 2.x,
flower/views/monitor.py). They name every worker, queue and task, so this file, which Flower
executes when it starts, gives /metrics the same check as the pages. /healthcheck stays open: it
says only "OK".
"""

import tornado.web
from flower.views import monitor

if not getattr(monitor.Metrics.get, "__wrapped__", None):
    monitor.Metrics.get = tornado.web.authenticated(monitor.Metrics.get)
