# syntax=docker/dockerfile:1
# One image for the query function (default command) and the index builder
# (python -m index_builder ...). Builds on an official slim Python image by default, and on any
# Debian-based image with python3 + venv (e.g. BASE_IMAGE=localhost/python-base:bookworm).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY functions ./functions
COPY index_builder ./index_builder
COPY function ./function
# Behind a TLS-intercepting proxy, hand its CA bundle in as the BuildKit secret "pip_cert";
# without the secret the build is unchanged.
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --upgrade pip \
    # Exactly the locked runtime dependencies, each checked against its sha256 (make lock),
    # then knative-rag itself on top, resolving nothing more; pip check proves they agree.
    && /opt/venv/bin/pip install --quiet --no-compile --require-hashes --no-deps -r requirements.lock \
    && /opt/venv/bin/pip install --quiet --no-compile --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --quiet --yes pip \
    # Test suites and type stubs shipped inside wheels are dead weight at run time.
    && find /opt/venv -depth -type d \( -name tests -o -name testing \) -path '*/site-packages/*' \
         -not -path '*/numpy/testing' -exec rm -rf {} + \
    && find /opt/venv -name '*.pyi' -delete \
    # Precompile once here: the root filesystem is read-only at run time. Third-party packages
    # ship as bytecode only (their sources are half the image); ours keep their sources.
    && site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && /opt/venv/bin/python -m compileall -q -b -j 0 -x '/(functions|index_builder|function)/' "$site" \
    && find "$site" -name '*.py' -not -path "$site/functions/*" -not -path "$site/index_builder/*" \
         -not -path "$site/function/*" -delete \
    && /opt/venv/bin/python -m compileall -q -j 0 "$site/functions" "$site/index_builder" "$site/function" \
    # botocore carries the API models of ~450 AWS services; the function and the builder call
    # S3, and the credential chain may call STS (IRSA, assume-role) and SSO.
    && for d in "$site"/botocore/data/*/; do \
         case "$(basename "$d")" in s3|sts|sso|sso-oidc) ;; *) rm -rf "$d" ;; esac; \
       done

# The runtime root: the base image without what only a package manager or a human reads,
# plus the virtual environment. It is flattened into one layer below, so what is removed here
# does not ship at all.
FROM ${BASE_IMAGE} AS rootfs
# No package manager at run time either: dpkg, apt and the perl they need go too.
RUN rm -rf /var/cache/apt/* /var/cache/debconf/* /var/lib/apt/lists/* /var/log/* \
           /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian \
           /root/.cache /tmp/* \
    && rm -rf /usr/bin/apt* /usr/lib/apt /usr/lib/*-linux-gnu/libapt-* /etc/apt \
              /usr/bin/perl* /usr/lib/*-linux-gnu/perl* /usr/share/perl* \
              /var/lib/dpkg /usr/bin/dpkg* /usr/share/dpkg /etc/dpkg
COPY --from=build /opt/venv /opt/venv

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="knative-rag" \
      org.opencontainers.image.description="Serverless RAG query function and index builder" \
      org.opencontainers.image.source="https://github.com/knative-rag/knative-rag" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.knative-rag.index-format-version="1"
COPY --from=rootfs / /
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PORT=8080 \
    RAG_CACHE_DIR=/tmp/knative-rag
# Any uid works: nothing outside /tmp is written, and nothing needs to be owned.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["python", "-m"]
CMD ["functions"]
