# syntax=docker/dockerfile:1
# Redis for deploy/local, where Docker Hub's `redis` image cannot be pulled: Debian's
# redis-server package (7.0 in bookworm) on a local base. The StatefulSet runs it with its
# own command line (`redis-server /etc/redis/redis.conf --dir /data ...`) as uid 999, the
# official image's redis user, and probes it with `sh -c "redis-cli ... | grep -q PONG"`.
#   podman build -f deploy/local/redis.Dockerfile --build-arg BASE=local/debian:bookworm \
#     -t localhost/tsweep-local/redis:bookworm deploy/local
ARG BASE=debian:bookworm
FROM ${BASE}
LABEL org.opencontainers.image.title="tsweep-local-redis" \
      org.opencontainers.image.description="Debian's redis-server for tsweep's local pods"
# The redis user first, as uid/gid 999 like the official image, so that the package's
# files belong to the uid the pod runs as. /etc/redis is left empty: the pod mounts its
# ConfigMap there (a volume over a non-empty image directory would start with its files).
RUN groupadd --system --gid 999 redis \
 && useradd --system --uid 999 --gid 999 --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
 && apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* /etc/redis/* \
 && mkdir -p /data \
 && chown 999:999 /data
USER 999:999
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data"]
