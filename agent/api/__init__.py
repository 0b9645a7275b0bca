"""The HTTP API's routes, grouped by resource; `server.py` builds the app from them."""
