# syntax=docker/dockerfile:1
# tsweep worker agent + trainer (`tsweep-worker`) on CUDA-enabled libtorch 2.11.
# Build from the repository root (the build stage downloads the torch wheels, ~4.5 GB):
#   docker build -f deploy/docker/worker.Dockerfile -t tsweep/worker:0.1.0 .
# Check:  docker run --rm tsweep/worker:0.1.0 --version   # tsweep-worker X.Y.Z (protocol N)
#
# libtorch comes from the PyTorch wheel (tch's LIBTORCH_USE_PYTORCH=1, as in
# scripts/env.sh). torch 2.11.0's default Linux wheel is built for CUDA 13.0 and brings
# the CUDA runtime, cuBLAS, cuDNN and NCCL as nvidia-* wheels; the runtime stage copies
# torch/lib and nvidia/ side by side so libtorch's RPATH ($ORIGIN/../../nvidia/...)
# still finds them. Hosts need an NVIDIA driver that supports CUDA 13.0 (>= 580).
#
# Build arguments (the defaults are the public images users pull):
#   BUILDER_BASE  the Rust toolchain image of the `build` stage
#   RUNTIME_BASE  the image the worker runs on (CUDA base; any Debian/Ubuntu for the CPU)
#   BINARIES      `build` (default): compile in the image; `prebuilt`: copy what was built
#                 on the host from a build context holding `tsweep-worker` and `libtorch/`
#                 (the /opt/libtorch tree: `torch/lib/*.so`, plus `nvidia/` for CUDA).
#                 deploy/local/build-images.sh stages it from the torch venv, with only
#                 the CPU libraries the binary loads for a CPU image. A host binary must
#                 come from a glibc no newer than RUNTIME_BASE's.
#   docker build -f deploy/docker/worker.Dockerfile --build-arg BINARIES=prebuilt \
#     --build-arg RUNTIME_BASE=debian:bookworm -t tsweep/worker:dev-cpu DIR

ARG RUST_VERSION=1.95
ARG BUILDER_BASE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_BASE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG BINARIES=build

FROM ${BUILDER_BASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TORCH_VERSION=2.11.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch \
 && /opt/torch/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
 && mkdir -p /opt/libtorch/torch \
 && site="$(/opt/torch/bin/python -c 'import site; print(site.getsitepackages()[0])')" \
 && cp -a "$site/torch/lib" /opt/libtorch/torch/lib \
 && cp -a "$site/nvidia" /opt/libtorch/nvidia
ENV PATH=/opt/torch/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
# Nothing in the binary calls into libtorch_cuda directly, so the linker's default
# --as-needed would drop it and CUDA would silently be missing at run time (a known tch
# pitfall). `cargo rustc` passes the extra link arguments to the final binary only (not to
# build scripts); the readelf check fails the build if libtorch_cuda is not linked.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo rustc --release --locked -p tsweep-worker --bin tsweep-worker -- \
      -C link-arg=-Wl,--no-as-needed -C link-arg=-ltorch_cuda -C link-arg=-Wl,--as-needed \
 && readelf -d target/release/tsweep-worker | grep -q 'libtorch_cuda.so' \
 && install -D -m 0755 target/release/tsweep-worker /out/tsweep-worker

FROM scratch AS prebuilt
COPY libtorch /opt/libtorch
COPY tsweep-worker /out/tsweep-worker

# The stage named by BINARIES; builders skip the other one.
FROM ${BINARIES} AS binaries

FROM ${RUNTIME_BASE} AS runtime
LABEL org.opencontainers.image.title="tsweep-worker" \
      org.opencontainers.image.description="tsweep worker agent and libtorch trainer" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini as PID 1: forwards SIGTERM to the agent (which checkpoints its trainer children)
# and reaps any orphaned child.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 tsweep \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tsweep
COPY --from=binaries /opt/libtorch /opt/libtorch
COPY --from=binaries /out/tsweep-worker /usr/local/bin/tsweep-worker
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/tsweep-worker"]
CMD ["agent", "--config", "/etc/tsweep/worker.toml"]
