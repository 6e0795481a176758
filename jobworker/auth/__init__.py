"""Who may do what: users, passwords, tokens, certificates, throttle, audit."""
