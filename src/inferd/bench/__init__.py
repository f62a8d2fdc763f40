"""`inferd bench`: load against any OpenAI-compatible server, and the in-process ceiling."""
