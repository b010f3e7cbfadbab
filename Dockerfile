# One image for the trainer and every worker kind (compose.yaml picks the command).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The CPU build of torch first, from PyTorch's own index: PyPI's default build carries CUDA (GBs).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY bus ./bus
COPY trainer ./trainer
COPY workers ./workers
RUN pip install .

COPY examples ./examples

# Run directories and checkpoints go to the shared volume.
VOLUME ["/runs"]
WORKDIR /runs

CMD ["trainer", "--help"]
