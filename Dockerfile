# cgmed on NVIDIA GPUs: PyTorch + CUDA base, cgmed installed as a package (pip install '.[dev]';
# configs and DeepSpeed JSONs are package data), entry points on PATH, non-root user.
#
#   docker build -t cgmed .
#   docker run --rm --gpus all --ipc=host -v /data/Med-MAT:/data/Med-MAT:ro -v "$PWD/runs:/workspace/cgmed/runs" \
#       cgmed cgmed-cg experiment=NAME data.root=/data/Med-MAT hydra.run.dir=runs/NAME
#
# The -devel base carries nvcc, which DeepSpeed needs to compile its ops at first use (the
# *_offload configs' CPU Adam); `--build-arg BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime`
# gives a smaller image that runs everything else.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/workspace/cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

# A non-root user; the repository (launch scripts, tests, benchmarks) is the working directory.
RUN groupadd --gid 1000 cgmed \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash cgmed \
    && mkdir -p /workspace/cgmed /workspace/cache \
    && chown -R cgmed:cgmed /workspace

WORKDIR /workspace/cgmed

# Dependencies first (this layer is rebuilt only when pyproject.toml or the package changes),
# then the configs, launchers, tests and benchmarks.
COPY --chown=cgmed:cgmed pyproject.toml README.md ./
COPY --chown=cgmed:cgmed cgmed ./cgmed
# DL3013 asks for pinned versions: this installs the checkout itself, whose dependency ranges
# are pinned where they belong, in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[dev]' \
    && chown -R cgmed:cgmed /workspace/cgmed
COPY --chown=cgmed:cgmed . .

USER 1000:1000
RUN for tool in cgmed-data cgmed-train cgmed-eval cgmed-cg cgmed-report cgmed-model accelerate torchrun; do \
        command -v "$tool" >/dev/null || { echo "missing on PATH: $tool" >&2; exit 1; }; \
    done \
    && python -c "from cgmed.conf import CONF_DIR; assert (CONF_DIR / 'config.yaml').is_file(), CONF_DIR"

CMD ["bash"]
