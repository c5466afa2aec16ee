# syntax=docker/dockerfile:1
# tsweep coordinator + CLI (`tsweep`). No libtorch: the coordinator never links it.
# Build from the repository root (compiles in the image):
#   docker build -f deploy/docker/coordinator.Dockerfile -t tsweep/coordinator:0.1.0 .
# Check:  docker run --rm tsweep/coordinator:0.1.0 --version   # tsweep X.Y.Z (protocol N)
#
# Build arguments (the defaults are the public images users pull):
#   BUILDER_BASE  the Rust toolchain image of the `build` stage
#   RUNTIME_BASE  the image the binary runs on (glibc + libgcc are all it needs)
#   BINARIES      `build` (default): compile in the image; `prebuilt`: copy a `tsweep`
#                 binary built on the host instead, from a build context that holds just
#                 that file (deploy/local/build-images.sh stages it; for CI speed). A host
#                 binary must come from a glibc no newer than RUNTIME_BASE's (Debian 12: 2.36).
#   docker build -f deploy/docker/coordinator.Dockerfile --build-arg BINARIES=prebuilt \
#     -t tsweep/coordinator:dev DIR_WITH_TSWEEP

ARG RUST_VERSION=1.95
ARG BUILDER_BASE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM ${BUILDER_BASE} AS build
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

FROM scratch AS prebuilt
COPY tsweep /out/tsweep

# The stage named by BINARIES; builders skip the other one.
FROM ${BINARIES} AS binaries

# distroless cc by default: glibc + libgcc, no shell, no package manager; runs as 65532 (nonroot).
FROM ${RUNTIME_BASE} AS runtime
LABEL org.opencontainers.image.title="tsweep-coordinator" \
      org.opencontainers.image.description="tsweep coordinator (gRPC, Redis state) and CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binaries /out/tsweep /usr/local/bin/tsweep
USER 65532:65532
# 50051 gRPC (tsweep.v1 + grpc.health.v1), 9464 Prometheus /metrics
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/tsweep"]
CMD ["serve", "--config", "/etc/tsweep/coordinator.toml"]
