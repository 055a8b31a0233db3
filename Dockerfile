# endpointd's own image, endpointd/endpointd: `endpointd serve` with the host's Docker socket
# mounted and the data dir on a volume (docs/compose.yaml, docs/endpointd.service).
#
#   docker build -t endpointd/endpointd .           # with internet access: FROM python:3.11-slim, pip install .
#   endpointd images build                          # offline: FROM endpointd/base:bookworm, from a wheelhouse
#
# The offline build (engines/images.py) makes a context of this file and `wheelhouse/`: endpointd's
# wheel and its dependencies' (`pip wheel` on the host) plus a pip wheel, since that base has no
# pip; it passes --build-arg BASE=endpointd/base:bookworm. With no wheelhouse, pip installs from
# the package index.
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
COPY . /src
RUN set -eu; \
    if [ -d /src/wheelhouse ]; then \
        python3 -m venv --without-pip /opt/endpointd; \
        pip_wheel=$(ls /src/wheelhouse/pip-*.whl); \
        /opt/endpointd/bin/python "$pip_wheel/pip" install --no-cache-dir --no-index --find-links /src/wheelhouse endpointd; \
    else \
        python3 -m venv /opt/endpointd; \
        /opt/endpointd/bin/pip install --no-cache-dir /src; \
    fi

# Only the venv: not the sources, nor the wheels.
FROM ${BASE}
COPY --from=build /opt/endpointd /opt/endpointd
# Listen on every interface of the container (publish it on the host as you choose), keep the data
# dir on the volume, and say so: replicas are reached by name on their networks (engines/docker.py).
ENV PATH=/opt/endpointd/bin:$PATH PYTHONUNBUFFERED=1 \
    ENDPOINTD_HOST=0.0.0.0 ENDPOINTD_PORT=8080 ENDPOINTD_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["endpointd"]
CMD ["serve"]
