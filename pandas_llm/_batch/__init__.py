"""The Batch API: the job facade, submitting, polling and collecting, the API client, JSONL files."""
