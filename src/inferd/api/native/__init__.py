"""The native dialect: /generate, /chat and their SSE streams, /models, /api/llms."""
