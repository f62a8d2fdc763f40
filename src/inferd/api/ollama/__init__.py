"""The Ollama dialect: /api/* with NDJSON streaming, as Ollama's own clients speak it."""
