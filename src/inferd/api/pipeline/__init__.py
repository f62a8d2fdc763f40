"""The one generation pipeline every dialect's routes use (see run.py for its stages)."""
