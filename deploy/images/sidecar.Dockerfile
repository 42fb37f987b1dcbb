# syntax=docker/dockerfile:1
# The sidecar image: docker build -f deploy/images/sidecar.Dockerfile -t coffer/sidecar:0.1.0 .
# Built with the size-optimised profile (opt-level s, fat LTO: see the root
# Cargo.toml): it runs in every pod. Distroless, no shell, nonroot by default;
# the pod's securityContext sets the app's uid (deploy/example).
FROM docker.io/library/rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --profile sidecar -p coffer-sidecar -p coffer-env --bin coffer-sidecar --bin coffer-env \
 && install -m 0555 target/sidecar/coffer-sidecar /coffer-sidecar \
 && install -m 0555 target/sidecar/coffer-env /coffer-env

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /coffer-sidecar /usr/local/bin/coffer-sidecar
# coffer-env rides along: the injector's init container copies it into pods
# that take secrets as environment variables (docs/env.md).
COPY --from=build /coffer-env /usr/local/bin/coffer-env
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/coffer-sidecar"]
CMD ["--help"]
