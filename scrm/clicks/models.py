"""Tables of the click write-behind."""
