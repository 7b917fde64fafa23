# The gridwatch worker image (docker-compose.yml builds it for the worker and simulator services).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The locked runtime set first, in a layer of its own: a code change does not reinstall it.
# Every dependency ships a manylinux wheel for 3.11: no compiler in the image.
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --require-hashes -r requirements/runtime.lock
# Then gridwatch itself, without resolving anything again.
COPY pyproject.toml README.md topology.py ./
COPY models ./models
COPY streams ./streams
COPY simulator ./simulator
COPY store ./store
RUN pip install --no-deps --no-build-isolation .

# The sample city: areas.csv (area classes and bounds) for the worker, meters.csv for the simulator.
COPY data/sample ./data/sample

RUN useradd --create-home --uid 10001 gridwatch && mkdir -p /app/.gridwatch && chown -R gridwatch /app/.gridwatch
USER gridwatch

# Inside a container the endpoints must listen beyond loopback (defaults bind 127.0.0.1).
ENV GRIDWATCH_METRICS_HOST=0.0.0.0 \
    GRIDWATCH_WEB_HOST=0.0.0.0 \
    GRIDWATCH_DATA_DIR=/app/.gridwatch/worker
EXPOSE 9308 6066

CMD ["gridwatch", "worker"]
