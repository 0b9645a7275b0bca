"""The QQ front end (NoneBot2 plugin and runner); it talks to `server.py` over HTTP."""
