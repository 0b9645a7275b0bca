# The service and the bot share one image: `qqrag serve` or `qqrag bot`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    QQRAG_DATA_DIR=/data \
    QQRAG_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md langgraph.json server.py ./
COPY agent agent
COPY tools tools
COPY graphs graphs
COPY bot bot
COPY evals evals
COPY docs docs
RUN pip install . \
    && useradd --create-home --uid 10001 qqrag \
    && mkdir -p /data && chown qqrag:qqrag /data

USER qqrag
VOLUME ["/data"]
EXPOSE 8000 8080
CMD ["qqrag", "serve"]
