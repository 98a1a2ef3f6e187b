"""Structured answers: schemas, parsing, typed columns, labels, packing."""
