# docfleet dispatcher: build with the workspace, run as a non-root user on a slim Debian.
# Build from the repository root: docker build -f deploy/docker/dispatcher.Dockerfile .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p docfleet-dispatcher --bin docfleet-dispatcher \
    && cp target/release/docfleet-dispatcher /docfleet-dispatcher

FROM debian:bookworm-slim
# The binaries are self-contained Rust (TLS roots compiled in); nothing else is installed.
RUN useradd --system --uid 10001 --home-dir /data --create-home docfleet
COPY --from=build /docfleet-dispatcher /usr/local/bin/docfleet-dispatcher
USER 10001
WORKDIR /data
ENV DOCFLEET__STORE__ROOT=/data/store \
    DOCFLEET__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/docfleet-dispatcher", "probe", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/docfleet-dispatcher"]
