"""Pure rules behind click counting (issue 12): who is a person (``agents``), who is the same
visitor (``visitor``), which click counts as unique (``counting``), and one request turned into
those facts (``events``). No I/O here; ``/t/{code}`` and the write-behind worker call these."""
