"""HTTP dialects over one engine."""
