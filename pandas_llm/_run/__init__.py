"""Realtime execution: the Run, the engine, the rate limiter, the budget."""
