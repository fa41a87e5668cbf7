# The metering worker image (used by docker-compose.yml).
FROM python:3.11.10-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY store ./store
# metering/ goes in whole; the worker never imports metering.simulate (the image keeps it
# for `metering simulate --to-kafka` against the compose broker).
COPY metering ./metering
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["metering"]
CMD ["worker"]
