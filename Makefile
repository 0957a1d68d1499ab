# Dorm: the two commands a newcomer needs are `make run` and `make test`.
# Both create .venv with the pinned requirements on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run run-uvicorn cluster worker beat test bench bench-history bench-presence bench-cluster bench-suite bench-faults clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Server WebSocket pings: every WS_PING_INTERVAL seconds per socket, and a
# socket whose pong is WS_PING_TIMEOUT seconds late is closed, so a client
# that vanished (no FIN) is cut within INTERVAL + TIMEOUT + 2 s (daphne checks
# every 2 s). The servers' default, 20 s, costs 500 pings/s at 10,000 idle
# sockets (docs/performance.md, "Idle CPU"); clients already prove they are
# alive with `heartbeat` (presence marks a silent socket offline after
# DORM_PRESENCE_TTL_SECONDS, 60 s), so the server pings only to reap dead
# sockets. Keep INTERVAL below any proxy's idle timeout (deploy/nginx.conf: 1 h).
WS_PING_INTERVAL ?= 300
WS_PING_TIMEOUT ?= 30

# The embedded mode: one process, SQLite (WAL) in ./db.sqlite3, nothing else.
# --websocket_timeout -1: daphne would otherwise cut every socket after 24 h.
run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) -m daphne -b $(HOST) -p $(PORT) --websocket_timeout -1 --ping-interval $(WS_PING_INTERVAL) --ping-timeout $(WS_PING_TIMEOUT) config.asgi:application

# The same application under uvicorn (lower latency, less CPU per message:
# docs/performance.md); 1 MiB frame limit as daphne's.
run-uvicorn: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) -m uvicorn config.asgi:application --host $(HOST) --port $(PORT) --ws websockets-sansio --ws-max-size 1048576 --ws-ping-interval $(WS_PING_INTERVAL) --ws-ping-timeout $(WS_PING_TIMEOUT)

# A local distributed-mode cluster (Procfile: two daphne processes on 8001 and
# 8002) on the machine's PostgreSQL and Redis; deploy/nginx.conf serves both
# on :8000. Override CLUSTER_DATABASE_URL / CLUSTER_REDIS_URL as needed.
CLUSTER_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/dorm
CLUSTER_REDIS_URL ?= redis://127.0.0.1:6379/0
cluster: $(STAMP)
	DATABASE_URL=$(CLUSTER_DATABASE_URL) $(PY) deploy/ensure_database.py
	DATABASE_URL=$(CLUSTER_DATABASE_URL) REDIS_URL=$(CLUSTER_REDIS_URL) $(PY) manage.py migrate --noinput
	DATABASE_URL=$(CLUSTER_DATABASE_URL) REDIS_URL=$(CLUSTER_REDIS_URL) $(VENV)/bin/honcho start -f Procfile
# Distributed mode (DATABASE_URL, REDIS_URL set): the Celery worker that runs
# alarms and periodic jobs, and beat, which schedules them (docs/alarms.md).
worker: $(STAMP)
	$(PY) -m celery -A config worker -l info

beat: $(STAMP)
	$(PY) -m celery -A config beat -l info -s $(VENV)/celerybeat-schedule

# The whole suite: unit tests, end-to-end tests against real servers.
test: $(STAMP)
	$(PY) -m pytest

# Fan-out benchmark (docs/performance.md); e.g. make bench BENCH_ARGS="--server uvicorn".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/fanout.py $(BENCH_ARGS)

# History page latency at 1e3 and 1e6 events (docs/performance-history.md).
bench-history: $(STAMP)
	$(PY) bench/history.py

# Presence under churn: joins+leaves per second (docs/presence.md).
bench-presence: $(STAMP)
	$(PY) bench/presence_churn.py $(BENCH_ARGS)
# Distributed-mode fan-out (issue 3): Dorm on one and two processes, the
# Channels tutorial consumer on channels-redis' core and pub/sub layers.
bench-cluster: $(STAMP)
	$(PY) bench/cluster.py $(BENCH_ARGS)

# Issue 12's workloads against Node ws and Durable Objects (Miniflare), one table.
bench-suite: $(STAMP)
	$(PY) bench/suite.py $(BENCH_ARGS)

# Issue 11's fault campaign (docs/reliability.md): two processes, many rooms,
# SIGKILL / Redis restart / PostgreSQL pause and cut / client cuts / slow
# clients, then every acknowledged event checked against the log. Not in
# `make test`; its short version is (tests/e2e/test_fault_campaign.py).
bench-faults: $(STAMP)
	$(PY) bench/faults.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
