"""A stand-in for a module's structlog logger in tests: records (level, event, fields)."""

from __future__ import annotations


class RecordingLog:
    def __init__(self, records=None, bound=None):
        self.records = [] if records is None else records
        self._bound = bound or {}

    def bind(self, **kw):
        return RecordingLog(self.records, {**self._bound, **kw})

    def __getattr__(self, level):
        return lambda event, **kw: self.records.append((level, event, {**self._bound, **kw}))

    def at(self, level):
        return [(event, fields) for lvl, event, fields in self.records if lvl == level]
