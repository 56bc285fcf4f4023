"""Module the dramatiq CLI loads (`scrm worker`): binds the actors to the configured Redis broker."""

from scrm.config import get_settings
from scrm.logs import configure_logging
from workers.broker import setup_broker

configure_logging(get_settings().log_level, get_settings().log_json)
broker = setup_broker()
