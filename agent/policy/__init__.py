"""Serving policy: who may ask (tenants), how often (quota, admission), what may be said
(sensitive words), which configuration answers (gray-release profiles), and what is counted
(Prometheus metrics).

Each module stands alone and knows nothing of FastAPI; the server wires them together.
"""
