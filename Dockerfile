# syntax=docker/dockerfile:1
#
# egress-edge: a distroless, non-root image.
#
#   docker build -t egress-edge .
#   docker run --rm -p 3128:3128 \
#     -v "$PWD/deploy/egress-edge:/etc/egress-edge:ro" \
#     -v egress-state:/var/lib/egress-edge \
#     egress-edge
#
# The config is not baked in: mount a directory holding config.yaml at /etc/egress-edge. In a
# container, the config should set `proxy.listen: 0.0.0.0:3128` and
# `state_dir: /var/lib/egress-edge`. Keep the admin API on loopback, or set `admin.token_file`
# before binding it to 0.0.0.0 (the proxy refuses a non-loopback admin listener without one).
# The guest trust-store installer is shipped at /usr/share/egress-edge/install-ca.sh.

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# protox compiles the SDS protos in-process: no protoc or other system packages are needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p egress-edge \
    && install -D -m 0755 target/release/egress-edge /out/usr/local/bin/egress-edge \
    && install -D -m 0755 ca/install-ca.sh /out/usr/share/egress-edge/install-ca.sh \
    && mkdir -p /out/etc/egress-edge /out/var/lib/egress-edge

# ---- runtime -----------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates (the system roots for upstream TLS), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/egress-edge /usr/local/bin/egress-edge
COPY --from=build /out/usr/share/egress-edge/install-ca.sh /usr/share/egress-edge/install-ca.sh
# Owned by the image's nonroot user (65532) so the state dir is writable: the CA key and the
# handle-signing key are created there (0600) on first start.
COPY --from=build --chown=65532:65532 /out/etc/egress-edge /etc/egress-edge
COPY --from=build --chown=65532:65532 /out/var/lib/egress-edge /var/lib/egress-edge
USER 65532:65532
VOLUME ["/etc/egress-edge", "/var/lib/egress-edge"]
# 3128: the proxy; 9901: admin (health, readiness, metrics, /ca.pem, /v1 API).
EXPOSE 3128 9901
# The image has no shell or curl: the binary probes its own admin listener. It assumes the
# default admin.listen 127.0.0.1:9901; override the command if your config moves it.
HEALTHCHECK --interval=10s --timeout=6s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/egress-edge", "health", "--admin", "127.0.0.1:9901"]
# Kubernetes ignores HEALTHCHECK; probe the admin port there:
#   livenessProbe:  httpGet { path: /healthz, port: 9901 }
#   readinessProbe: httpGet { path: /readyz,  port: 9901 }
# (/healthz and /readyz need no token; a pod-IP probe needs admin.listen 0.0.0.0:9901 with
# admin.token_file set.)
ENTRYPOINT ["/usr/local/bin/egress-edge"]
CMD ["run", "--config", "/etc/egress-edge/config.yaml"]
