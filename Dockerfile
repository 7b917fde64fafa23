# The gridwatch image: docker-compose.yml builds it once (service worker) and runs it for the
# worker, notify, archive-load and the demo simulator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The locked runtime set first, in a layer of its own: a code change does not reinstall it.
# Every dependency ships a manylinux wheel for 3.11: no compiler in the image.
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
# Then gridwatch itself, without resolving anything again.
COPY pyproject.toml README.md topology.py archive.py archive_csv.py meter_directory.py cli.py cli_errors.py ./
COPY models ./models
COPY streams ./streams
COPY simulator ./simulator
COPY store ./store
COPY local ./local
COPY notifier ./notifier
COPY evaluation ./evaluation
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

# The sample city's area classes and meter archive, where a utility mounts its own
# (docker-compose.yml: GRIDWATCH_ARCHIVE_DIR, read-only at /etc/gridwatch).
COPY data/sample/areas.csv data/sample/meters.csv /etc/gridwatch/

RUN groupadd --gid 10001 gridwatch \
    && useradd --create-home --uid 10001 --gid 10001 gridwatch \
    && mkdir -p /app/.gridwatch \
    && chown -R 10001:10001 /app/.gridwatch
# Numeric, so a runtime that checks for a non-root user can tell without /etc/passwd.
USER 10001:10001

# Inside a container the endpoints must listen beyond loopback (defaults bind 127.0.0.1).
ENV GRIDWATCH_METRICS_HOST=0.0.0.0 \
    GRIDWATCH_WEB_HOST=0.0.0.0 \
    GRIDWATCH_DATA_DIR=/app/.gridwatch/worker \
    GRIDWATCH_AREAS_CSV=/etc/gridwatch/areas.csv
EXPOSE 9308 6066

CMD ["gridwatch", "worker"]
