# One image for every Conveyor process; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged uid so volume ownership is the same on every rebuild.
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --create-home --home-dir /home/conveyor conveyor

WORKDIR /app

# Requirements first: the dependency layer is rebuilt only when they change.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The code stays root-owned (the app cannot rewrite itself); only var/ is
# writable, for beat's schedule file.
COPY . .
RUN mkdir -p /app/var && chown conveyor:conveyor /app/var

USER conveyor
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "api.wsgi:app"]
