"""Keys (hashed, compared in constant time), the principal a request runs as, rate limits
(the `limits` library) and the server's capacity gate. Nothing here knows about HTTP."""
