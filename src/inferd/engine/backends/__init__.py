"""Model backends. Only `llamacpp.py` imports llama_cpp."""
