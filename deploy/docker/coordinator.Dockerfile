# syntax=docker/dockerfile:1
# tsweep coordinator + CLI (`tsweep`). No libtorch: the coordinator never links it.
# Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t tsweep/coordinator:0.1.0 .
# Check:  docker run --rm tsweep/coordinator:0.1.0 --version   # tsweep X.Y.Z (protocol N)

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out
# in the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tsweep-coordinator --bin tsweep \
 && install -D -m 0755 target/release/tsweep /out/tsweep

# distroless cc: glibc + libgcc, no shell, no package manager; runs as 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="tsweep-coordinator" \
      org.opencontainers.image.description="tsweep coordinator (gRPC, Redis state) and CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/tsweep /usr/local/bin/tsweep
USER 65532:65532
# 50051 gRPC (tsweep.v1 + grpc.health.v1), 9464 Prometheus /metrics
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/tsweep"]
CMD ["serve", "--config", "/etc/tsweep/coordinator.toml"]
