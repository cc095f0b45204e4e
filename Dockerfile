# syntax=docker/dockerfile:1
# mailsync container images (docs/deploy.md).
#   docker build -t mailsync .                   the service: lean, no demo, no simulator
#   docker build --target ews-sim -t ews-sim .   the Exchange simulator (tests, the compose demo)

# --- build: both binaries, from the locked dependency set ---------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The production binary leaves the `demo` feature (and with it the in-process simulator and
# its unauthenticated /sim/ control API) out.
RUN cargo build --release --locked -p mailsync --no-default-features \
 && cargo build --release --locked -p ews-sim \
 && strip target/release/mailsync target/release/ews-sim

# --- ews-sim: the simulator, for the compose demo and tests ---------------------------------
FROM debian:bookworm-slim AS ews-sim
RUN useradd --system --uid 10002 --home-dir /nonexistent --shell /usr/sbin/nologin ews-sim
COPY --from=build /src/target/release/ews-sim /usr/local/bin/ews-sim
USER 10002:10002
EXPOSE 8765
ENTRYPOINT ["/usr/local/bin/ews-sim"]
CMD ["--listen", "0.0.0.0:8765", "--mailboxes", "5"]

# --- mailsync: the service (the default target) ---------------------------------------------
FROM debian:bookworm-slim AS mailsync
# ca-certificates: for an internal CA next to the built-in web PKI roots (servers.ca_file).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/mailsync --shell /usr/sbin/nologin mailsync \
 && mkdir -p /var/lib/mailsync /etc/mailsync \
 && chown mailsync:mailsync /var/lib/mailsync
COPY --from=build /src/target/release/mailsync /usr/local/bin/mailsync
# The config is mounted read-only at /etc/mailsync; a SQLite state store (the default
# `sqlite:mailsync-state.db`) lands in the volume at /var/lib/mailsync.
WORKDIR /var/lib/mailsync
VOLUME ["/var/lib/mailsync"]
# Inside a container the admin API must listen on every interface (publish it with care);
# a non-loopback listener needs admin.token (MAILSYNC_ADMIN_TOKEN).
ENV MAILSYNC_ADMIN_LISTEN=0.0.0.0:9898 \
    MAILSYNC_LOG_FORMAT=json
EXPOSE 9898
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/mailsync", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/mailsync"]
CMD ["run", "--config", "/etc/mailsync/mailsync.toml"]
