"""Who may do what, the audit trail, and what nothing may do (network, syscalls)."""
