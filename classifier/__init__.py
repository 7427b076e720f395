"""The network, its preprocessing and the model store, shared by trainer and workers.

This package imports torch and Pillow only: no Lightning, Celery or database.
"""
