"""Planning: rows -> distinct requests, spending nothing (prompts, request keys, dedup, outcomes, cache look-up)."""
