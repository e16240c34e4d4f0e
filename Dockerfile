# One image for every Logloom process; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
COPY plugins ./plugins
COPY config ./config
RUN pip install --no-cache-dir .
ENTRYPOINT ["logloom"]
