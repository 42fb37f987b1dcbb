# syntax=docker/dockerfile:1
# The broker image: docker build -f deploy/images/broker.Dockerfile -t coffer/broker:0.1.0 .
# Multi-stage: compiled in the Rust image, shipped on distroless (glibc, no
# shell, no package manager) as the nonroot user (65532). The binary is the one
# `cargo build --locked --release -p coffer-broker` builds outside Docker.
FROM docker.io/library/rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p coffer-broker --bin coffer-broker \
 && install -m 0555 target/release/coffer-broker /coffer-broker

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /coffer-broker /usr/local/bin/coffer-broker
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/coffer-broker"]
CMD ["--help"]
