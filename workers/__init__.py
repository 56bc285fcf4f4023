"""Dramatiq actors. Import ``workers.actors`` after ``workers.broker.setup_broker``."""
