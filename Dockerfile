FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scrm ./scrm
COPY workers ./workers
COPY sop_templates ./sop_templates
COPY layers ./layers
COPY journeys ./journeys
COPY crm ./crm
COPY config.yaml ./
RUN pip install --no-cache-dir .
ENV SCRM_DATA_DIR=/var/lib/scrm
CMD ["scrm", "serve", "--host", "0.0.0.0"]
