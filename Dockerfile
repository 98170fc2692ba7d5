# One image for every node of a split topology; compose.yml runs it once per node.
#   docker build -t ringflow .
#   docker run --rm ringflow ringflow run topology/examples/video-site.yaml --quiet
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY topology ./topology
COPY sim ./sim
RUN pip install --no-cache-dir .

# Commands run from /app, so topology/examples/... and the default reports/ and state/
# folders are where they are in a checkout; compose.yml mounts volumes on the last two.
CMD ["ringflow", "--help"]
