# OpenBatch container image: the `openbatch` server (serve / migrate / keys) on
# debian:bookworm-slim, running as non-root, with authentication on. The `fake-upstream`
# stand-in model server is NOT in it: it has a target of its own, for demos and tests.
#
#   docker build -t openbatch:local .
#   docker run --rm -p 8080:8080 -e OPENBATCH__DATABASE__URL=postgres://... openbatch:local
#   docker build --target fake-upstream -t openbatch-fake-upstream:local .
#
# Build args: RUST_VERSION (builder toolchain; the locked dependencies need >= 1.89).

ARG RUST_VERSION=1.95

# --- builder -----------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build
# The query macros read the committed .sqlx/ instead of a live database.
# Symbols stripped through cargo's env config (same value for both builds, so the dependency
# layer stays valid).
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# 1. Dependency layer: build every locked dependency against stub sources. This layer is
#    reused as long as Cargo.toml and Cargo.lock do not change (no cargo-chef needed).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/fake_upstream.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bins \
    && rm -rf src

# 2. The project itself. migrations/ is embedded at compile time by sqlx::migrate!, the
#    web console's files by include_str!, and .sqlx/ checks the statements.
COPY migrations ./migrations
COPY console ./console
COPY .sqlx ./.sqlx
COPY src ./src
# Make sure cargo rebuilds our crate (the stubs above may look newer than the real files).
RUN touch src/main.rs src/lib.rs src/bin/fake_upstream.rs \
    && cargo build --release --locked --bins \
    && ./target/release/openbatch --version

# --- fake-upstream (demo / tests only; never the production image) -----------------------
FROM debian:bookworm-slim AS fake-upstream
RUN groupadd --system --gid 10001 openbatch \
    && useradd --system --uid 10001 --gid openbatch --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin openbatch
COPY --from=builder /build/target/release/fake-upstream /usr/local/bin/
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["fake-upstream"]
CMD ["--host", "0.0.0.0", "--port", "8000"]

# --- runtime (the default target: the last stage) -----------------------------------------
FROM debian:bookworm-slim AS runtime

LABEL org.opencontainers.image.title="openbatch" \
      org.opencontainers.image.description="Self-hosted, OpenAI-compatible Batch and Files API server on PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"

# No extra packages: TLS roots are compiled in (rustls + webpki-roots) and the health check
# below uses bash's /dev/tcp instead of curl.
RUN groupadd --system --gid 10001 openbatch \
    && useradd --system --uid 10001 --gid openbatch --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin openbatch \
    && install -d -o 10001 -g 10001 -m 0700 /var/spool/openbatch

COPY --from=builder /build/target/release/openbatch /usr/local/bin/
# For reference only: the binary carries its migrations.
COPY migrations /app/migrations

WORKDIR /app
# config/openbatch.toml is read relative to /app (mount one at /app/config/openbatch.toml,
# or set OPENBATCH_CONFIG); every setting can also come from OPENBATCH__* variables.
# Reachable from outside the container, so authentication is on: `serve` refuses to run
# anonymously on 0.0.0.0 unless OPENBATCH__AUTH__ALLOW_ANONYMOUS=true says so.
ENV OPENBATCH__SERVER__HOST=0.0.0.0 \
    OPENBATCH__SERVER__PORT=8080 \
    OPENBATCH__AUTH__ENABLED=true \
    OPENBATCH__LOG__FORMAT=json

USER 10001:10001
EXPOSE 8080

# GET /healthz with bash alone: 200 while the process is up.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${OPENBATCH__SERVER__PORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

# openbatch handles SIGTERM itself (drains HTTP, then the batch worker), so it runs as PID 1.
ENTRYPOINT ["openbatch"]
CMD ["serve"]
