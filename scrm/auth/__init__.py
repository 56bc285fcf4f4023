"""Who may see what: users, roles (manager, operator, store staff, sales rep) and sign-in."""
