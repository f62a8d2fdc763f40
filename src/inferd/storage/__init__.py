"""Persistence (SQLAlchemy 2 async). Other layers import only `records`."""
