# One image for every part: web (sm8cd web), worker and beat (celery -A tasks ...), flower and the
# simulators. See docker-compose.yml.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The runtime lock first (its own layer, cached while it is unchanged): every package pinned with
# its hashes, so the image holds exactly what CI tested. Then the bridge itself, resolving nothing.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY mappings ./mappings
COPY tasks ./tasks
RUN pip install --no-deps --no-build-isolation . && useradd --create-home --uid 10001 bridge

USER bridge
ENV BRIDGE_STATE_DIR=/home/bridge/state \
    LOG_FORMAT=json
EXPOSE 8000
CMD ["sm8cd", "run", "--host", "0.0.0.0"]
