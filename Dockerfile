# syntax=docker/dockerfile:1
# Multi-stage: build with the full Rust toolchain, run on a slim Debian as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (needs a C toolchain, make, perl, zlib, OpenSSL).
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential pkg-config libssl-dev zlib1g-dev perl \
    && rm -rf /var/lib/apt/lists/*
# The whole tree, tools/ included: cargo reads every workspace member's manifest (tools/loadgen,
# tools/testkit) even to build the service alone, which is all this image builds.
COPY . .
# The production profile adds fat LTO: slower to build, less CPU per request (docs/benchmarks.md).
RUN cargo build --profile production --locked --bin hookbridge \
    && strip target/production/hookbridge

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/hookbridge --create-home hookbridge \
    && install -d -o hookbridge -g hookbridge /var/lib/hookbridge/spool
COPY --from=build /src/target/production/hookbridge /usr/local/bin/hookbridge
COPY config /etc/hookbridge
USER hookbridge
WORKDIR /var/lib/hookbridge
EXPOSE 8080
# The probe is the binary itself: this image has no curl, and dash has no /dev/tcp. The address
# is the admin listener of config/compose.toml; with another config, override the healthcheck.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=12 \
    CMD ["/usr/local/bin/hookbridge", "health", "--addr", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/hookbridge"]
CMD ["serve", "--config", "/etc/hookbridge/compose.toml", "--log-format", "json"]
