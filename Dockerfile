# stdiff for GPU training: a pinned CUDA PyTorch base image with stdiff and every dependency
# installed at build time (nothing is fetched when the container runs).
#   docker build -t stdiff .
#   docker run --gpus all -v "$PWD/lightning_logs:/workspace/lightning_logs" stdiff fit --config /opt/stdiff/configs/gpu/single.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /opt/stdiff
COPY pyproject.toml README.md ./
COPY stdiff ./stdiff
# The base image's torch 2.5.1 is stdiff's floor, the version the lowest-versions job tests
# (tests/test_lowest_versions.py): pip keeps it and adds the rest.
# The presets ship inside the package (stdiff/configs); /opt/stdiff/configs is kept as the documented path.
RUN pip install --no-cache-dir . \
    && ln -s /opt/stdiff/stdiff/configs /opt/stdiff/configs \
    && useradd --create-home --uid 1000 stdiff \
    && mkdir -p /workspace/lightning_logs \
    && chown -R stdiff:stdiff /workspace

USER 1000:1000
WORKDIR /workspace
VOLUME ["/workspace/lightning_logs"]
ENTRYPOINT ["stdiff"]
CMD ["--help"]
