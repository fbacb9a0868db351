# The worker image: `crm-sync worker` with the pinned dependencies of constraints.txt.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY processors processors
COPY connectors connectors
COPY schemas schemas
RUN pip install --no-cache-dir -c constraints.txt .
USER nobody
EXPOSE 9464
ENTRYPOINT ["crm-sync"]
CMD ["worker"]
