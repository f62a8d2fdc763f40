"""The engine: a core loop on its own thread over a backend. Knows nothing of HTTP."""
