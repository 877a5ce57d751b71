# TamperScan service image. The registry's torch wheels carry their CUDA runtime, so the same
# image scores on a GPU (run with --gpus all and the NVIDIA container toolkit) or on the CPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TAMPERSCAN_CONFIG=/etc/tamperscan/config.toml \
    TAMPERSCAN_STORAGE__DATA_DIR=/data \
    TAMPERSCAN_ADMIN__HOST=0.0.0.0

WORKDIR /opt/tamperscan
COPY pyproject.toml README.md ./
COPY tamperscan ./tamperscan
COPY scp ./scp
COPY detector ./detector
COPY storage ./storage
COPY admin ./admin
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin tamperscan \
    && mkdir -p /data /etc/tamperscan \
    && chown tamperscan /data
COPY config.toml /etc/tamperscan/config.toml

USER tamperscan
VOLUME ["/data"]
# DICOM (C-STORE/C-ECHO) and HTTP (admin web report, STOW-RS, /healthz, /metrics).
EXPOSE 11112 8080
# Allow your PACS before use, e.g. -e TAMPERSCAN_SCP__ALLOWED_HOSTS='["10.1.2.3"]'
# -e TAMPERSCAN_SCP__ALLOWED_CALLING_AETS='["PACS"]' (the default accepts loopback only).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["tamperscan", "echo", "--timeout", "10"]
ENTRYPOINT ["tamperscan"]
CMD ["serve"]
