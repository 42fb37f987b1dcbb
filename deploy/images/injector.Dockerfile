# syntax=docker/dockerfile:1
# The injector image: docker build -f deploy/images/injector.Dockerfile -t coffer/injector:0.1.0 .
# Multi-stage: compiled in the Rust image, shipped on distroless (glibc, no
# shell, no package manager) as the nonroot user (65532). The binary is the one
# `cargo build --locked --release -p coffer-injector` builds outside Docker.
FROM docker.io/library/rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p coffer-injector --bin coffer-injector \
 && install -m 0555 target/release/coffer-injector /coffer-injector

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /coffer-injector /usr/local/bin/coffer-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/coffer-injector"]
CMD ["--help"]
