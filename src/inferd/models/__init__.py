"""Model specs, the registry of served models, and chat templates."""
