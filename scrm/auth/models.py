"""Tables of users and their roles."""
