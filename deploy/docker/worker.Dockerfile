# docfleet worker: build with the workspace, run as a non-root user on a slim Debian.
# Build from the repository root: docker build -f deploy/docker/worker.Dockerfile .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p docfleet-worker --bin docfleet-worker \
    && cp target/release/docfleet-worker /docfleet-worker

FROM debian:bookworm-slim
# OCR runs Tesseract and renders scanned PDF pages with pdftoppm; nothing else is needed.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng poppler-utils \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /data --create-home docfleet
COPY --from=build /docfleet-worker /usr/local/bin/docfleet-worker
USER 10001
WORKDIR /data
ENV DOCFLEET__STORE__ROOT=/data/store \
    DOCFLEET__HEALTH_LISTEN=0.0.0.0:9091
EXPOSE 9091
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/docfleet-worker", "probe", "http://127.0.0.1:9091/readyz"]
ENTRYPOINT ["/usr/local/bin/docfleet-worker"]
