"""Counting before paying: tokens, model families, the estimate."""
