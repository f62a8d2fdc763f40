"""The web chat page's built files (index.html, app.js, app.css), served at /ui by
inferd.api.ui. Their sources and build are in ui/ at the repository root: `make ui`."""
