"""Observers of a run: the terminal bar and the notebook widget. They never drive the work."""
