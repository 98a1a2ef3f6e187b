"""Past one machine: the Dask accessor, the shared account limit, its coordinator."""
