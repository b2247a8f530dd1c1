# Build: docker build -t asap-proxy .
# Run:   docker run -v "$PWD/deploy-config:/etc/asap-proxy:ro" -p 8080:8080 asap-proxy
# The mounted directory holds proxy.yaml and the keys it names; inside a container the
# listeners must bind 0.0.0.0 to be reachable.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked \
    && strip target/release/asap-proxy

# Distroless: glibc, CA certificates and a non-root user, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/asap-proxy /usr/local/bin/asap-proxy
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/asap-proxy"]
CMD ["run", "--config", "/etc/asap-proxy/proxy.yaml"]
