# ups-gateway image: built in one stage (with a compiler, for any dependency without a wheel),
# run from a slim stage holding only the installed wheels — no compiler, no build tools — as an
# unprivileged user. Configuration: /etc/ups-gateway/config.yaml, overridden by UPSGW_* variables.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/ups-gateway --create-home ups
COPY config.yaml /etc/ups-gateway/config.yaml
ENV UPSGW_DATA_DIR=/var/lib/ups-gateway \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/ups-gateway
VOLUME ["/var/lib/ups-gateway"]
EXPOSE 8080 11112
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('UPSGW_REST__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["ups-gateway"]
CMD ["--config", "/etc/ups-gateway/config.yaml"]
