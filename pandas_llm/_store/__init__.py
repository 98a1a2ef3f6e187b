"""The store: the only code that speaks SQL (the sidecar, its committer, the batch ledger, leases)."""
