"""The results store: area-window history, alerts, cases and the ledger in PostgreSQL."""
