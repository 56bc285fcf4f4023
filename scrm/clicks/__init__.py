"""Pure rules behind click counting (issue 12): who is a person, who is the same visitor, which
click counts as unique. No I/O here; ``/t/{code}`` and the write-behind worker call these."""
