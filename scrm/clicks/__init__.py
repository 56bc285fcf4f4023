"""Click counting (issue 12). The pure rules: who is a person (``agents``), who is the same
visitor (``visitor``), which click counts as unique (``counting``), and one request turned into
those facts (``events``). The plumbing around them: ``/t/{code}`` records a click with one RPUSH
(``recording``, records in ``queue``), the write-behind writes batches to the database
(``flush`` → ``store``), ``secret`` derives the clicks secret and issues customer links."""
