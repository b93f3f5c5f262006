# Switchyard's container image: a multi-stage build into a small runtime image
# that runs as a non-root user.
#
#   docker build -t switchyard:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 switchyard:0.1.0
#
# Paths: rules are read from /etc/switchyard/rules (a folder; mount a
# ConfigMap there), state (the embedded store, audit.jsonl) goes to
# /var/lib/switchyard (mount a volume), API keys from
# /etc/switchyard/keys/keys.toml when --api-keys is given. protox compiles the
# protobuf definitions, so the build needs no system protoc.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY routing-rules ./routing-rules
RUN cargo build --release --locked --bin switchyard \
    && strip target/release/switchyard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 switchyard \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin switchyard \
    && mkdir -p /var/lib/switchyard \
    && chown 10001:10001 /var/lib/switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY routing-rules /etc/switchyard/rules
USER 10001:10001
EXPOSE 50051 9464
VOLUME ["/var/lib/switchyard"]
ENTRYPOINT ["/usr/local/bin/switchyard"]
# In a pod the kubelet's probes arrive on the pod IP: listen beyond loopback.
# Without --api-keys only loopback callers may Route; health stays open.
CMD ["serve", "--rules=/etc/switchyard/rules", "--state-dir=/var/lib/switchyard", \
     "--listen=0.0.0.0:50051", "--admin-listen=0.0.0.0:9464", "--log-format=json"]
