# The commerce and commerce-operator images, built from a staged root: a
# distroless-like Debian base (glibc, libgcc, CA bundle, tzdata, user 65532,
# no shell) plus the binary at /usr/local/bin/<BINARY>. Write the root with
#
#   bash e2e/scripts/images.sh stage commerce DIR
#   docker build -f Dockerfile --build-arg BINARY=commerce DIR
#
# (buildah and kaniko take the same arguments; VERSION, REVISION, CREATED and
# SOURCE fill the OCI labels). `make images` builds the project's own images
# with this file, so the two cannot drift apart.
#
# No RUN steps: the image has no shell, and the build needs no container
# runtime. A builder does not expand ARGs inside an exec-form ENTRYPOINT, so
# each binary has a stage naming its entrypoint, and the last FROM picks the
# stage BINARY names.

# commerce or commerce-operator.
ARG BINARY=commerce

FROM scratch AS root
# OCI labels: where the source lives, which version and commit the binary was
# built from, and when the image was built (images.sh passes them all).
ARG SOURCE=https://example.invalid/commerce-stack
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="commerce-stack"
COPY . /
# `nonroot` in the staged /etc/passwd; numeric, so Kubernetes' runAsNonRoot
# can verify it without reading the image's files.
USER 65532:65532

FROM root AS commerce
LABEL org.opencontainers.image.title="commerce" \
      org.opencontainers.image.description="The one commerce-stack binary: commerce serve <service>"
ENTRYPOINT ["/usr/local/bin/commerce"]

FROM root AS commerce-operator
LABEL org.opencontainers.image.title="commerce-operator" \
      org.opencontainers.image.description="The commerce-stack Kubernetes operator"
ENTRYPOINT ["/usr/local/bin/commerce-operator"]

FROM ${BINARY}
