"""Experiment tracking: the run's `Tracker` (MLflow and TensorBoard), how a stage opens its run (`connect`), the
durable spool and its replay, the local store's health, and system metrics. The only package that talks to MLflow's
tracking API; `pipeline.registry` talks to its model registry.
"""
