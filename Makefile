# doodle minute stats — `make run` and `make test` are all a new user needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY        ?= python3.11
VENV      := .venv
VPY       := $(VENV)/bin/python
MVN       := mvn -q -B
SAMPLE    := data/stream.jsonl.gz
TRUTH     := data/stream.truth.json
INPUT     ?= $(SAMPLE)
TOPIC     ?=
JOB_ARGS  ?=
PYTEST_ARGS ?=

JAVA_SRC  := $(shell find java/src -name '*.java' 2>/dev/null)
UDF_JAR   := java/target/doodle-udf.jar
STAMP_VENV  := $(VENV)/.installed
STAMP_SPARK := .deps/spark-jars/.fetched
STAMP_KAFKA := .deps/kafka-jars/.fetched
STAMP_STORAGE := .deps/storage-jars/.fetched
PLAIN_CONF  := conf/spark/spark-defaults.conf

.PHONY: help setup run test test-fast lint bench-smoke kafka-up kafka-down kafka-status cluster-up cluster-down cluster-status wheel sample load stats bench notebook chaos soak quarantine-purge maintain clean distclean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

setup: $(STAMP_VENV) $(STAMP_SPARK) $(STAMP_STORAGE) $(STAMP_KAFKA) $(UDF_JAR) $(PLAIN_CONF) ## virtualenv + jars (Spark connectors, object stores, Kafka broker) + fast parser + the driver's class archive; once
	@$(VPY) -m tools.class_archive || true

$(STAMP_VENV): requirements.txt
	@command -v $(PY) >/dev/null || { echo "setup: $(PY) not found — install Python 3.11 (or make PY=python3 ...)"; exit 2; }
	@echo "setup: creating $(VENV) and installing requirements.txt"
	@[ -x $(VPY) ] || $(PY) -m venv $(VENV)
	@$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $@

$(STAMP_SPARK): maven/spark-jars.pom.xml
	@command -v mvn >/dev/null || { echo "setup: mvn not found — install Maven"; exit 2; }
	@echo "setup: fetching Spark's Kafka connector and Delta Lake jars"
	@rm -rf .deps/spark-jars && $(MVN) -f maven/spark-jars.pom.xml dependency:copy-dependencies
	@touch $@

$(STAMP_STORAGE): maven/storage-jars.pom.xml
	@command -v mvn >/dev/null || { echo "setup: mvn not found — install Maven"; exit 2; }
	@echo "setup: fetching the object-store connectors (Hadoop S3A + AWS SDK modules)"
	@rm -rf .deps/storage-jars && $(MVN) -f maven/storage-jars.pom.xml dependency:copy-dependencies
	@touch $@

$(STAMP_KAFKA): maven/kafka-broker.pom.xml
	@command -v mvn >/dev/null || { echo "setup: mvn not found — install Maven"; exit 2; }
	@echo "setup: fetching the Apache Kafka broker jars"
	@rm -rf .deps/kafka-jars && $(MVN) -f maven/kafka-broker.pom.xml dependency:copy-dependencies
	@touch $@

$(UDF_JAR): java/pom.xml $(JAVA_SRC)
	@echo "setup: building the JVM fast parser"
	@$(MVN) -f java/pom.xml package -DskipTests
	@touch $@

# conf/spark/spark-defaults.conf (git-ignored: absolute paths of the jars) and the virtualenv's
# Spark reading conf/spark: plain `spark-submit jobs/<job>.py` from the activated .venv works
$(PLAIN_CONF): conf/spark-defaults.conf conf/doodle.toml $(STAMP_VENV) $(STAMP_SPARK) $(STAMP_STORAGE) $(UDF_JAR)
	@$(VPY) -m tools.plain_conf

wheel: setup ## build the doodlestats wheel (.deps/dist/<hash>/) if its sources changed; print its path
	@./spark-submit.sh --build-wheel

kafka-up: setup ## start the embedded Kafka broker (KRaft) and create the topics
	@$(VPY) -m tools.kafka_local up

kafka-down: ## stop the embedded Kafka broker (by its PID file)
	@if [ -x $(VPY) ]; then $(VPY) -m tools.kafka_local down; else echo "kafka: not set up"; fi

kafka-status: ## is the embedded broker running?
	@$(VPY) -m tools.kafka_local status

cluster-up: setup ## start a Spark standalone cluster: master 127.0.0.1:7077 (UI :8080), 2 workers x 1 core
	@$(VPY) -m tools.cluster_local up

cluster-down: ## stop the local Spark cluster (by its PID files)
	@if [ -x $(VPY) ]; then $(VPY) -m tools.cluster_local down; else echo "cluster: not set up"; fi

cluster-status: ## is the local Spark cluster running? its workers
	@$(VPY) -m tools.cluster_local status

$(SAMPLE): | $(STAMP_VENV)
	@mkdir -p data
	$(VPY) -m tools.generator --count 1000000 --rate 1000 --users 100000 --seed 1 --out $(SAMPLE) --truth $(TRUTH)

sample: $(SAMPLE) ## write the challenge data set: 1M frames (data/stream.jsonl.gz + truth)

load: kafka-up ## produce INPUT (JSONL, .gz or -) into TOPIC (default doodle)
	$(VPY) -m tools.loader $(INPUT) $(if $(TOPIC),--topic $(TOPIC))

run: setup sample ## set-up, embedded Kafka, load the sample once, run minute_stats and print the minute table
	@$(VPY) -m tools.kafka_local up
	@$(VPY) -m tools.loader $(SAMPLE) --once
	./spark-submit.sh jobs/minute_stats.py --available-now --table $(JOB_ARGS)

test: setup ## set-up, then the whole test suite (starts and stops its own broker)
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP_VENV) ## ruff (every Python file) and mypy (doodlestats, jobs, tools), as configured in pyproject.toml
	$(VPY) -m ruff check .
	$(VPY) -m mypy

test-fast: setup ## the tests that need neither Kafka nor Spark
	$(VPY) -m pytest -m "not integration" $(PYTEST_ARGS)

bench: setup sample ## benchmarks side by side (see bench/README.md)
	$(VPY) -m bench.run $(BENCH_ARGS)

# JupyterLab in the foreground (Ctrl-C stops it), on 127.0.0.1 only: NB_PORT if given, else 8888
# or, if that is taken, a free port; the URL with a fresh token is printed before it starts.
NB_PORT ?=
DOODLE_DELTA ?= data/delta
NB_BIND := import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); print(s.getsockname()[1])
notebook: setup ## JupyterLab with notebooks/minute_stats.ipynb on 127.0.0.1 (NB_PORT=, DOODLE_DELTA=data/delta)
	@port="$(NB_PORT)"; \
	if [ -z "$$port" ]; then port=$$($(VPY) -c '$(NB_BIND)' 8888 2>/dev/null || $(VPY) -c '$(NB_BIND)' 0); \
	elif ! $(VPY) -c '$(NB_BIND)' "$$port" >/dev/null 2>&1; then \
	    echo "notebook: port $$port is in use or invalid — make notebook NB_PORT=<another port>"; exit 2; fi; \
	token=$$($(VPY) -c 'import secrets; print(secrets.token_hex(24))'); \
	echo "notebook: DOODLE_DELTA=$(DOODLE_DELTA)$(if $(DOODLE_APPROX_DELTA), DOODLE_APPROX_DELTA=$(DOODLE_APPROX_DELTA))"; \
	echo "notebook: open http://127.0.0.1:$$port/lab/tree/notebooks/minute_stats.ipynb?token=$$token  (Ctrl-C stops)"; \
	DOODLE_DELTA="$(DOODLE_DELTA)" exec $(VENV)/bin/jupyter-lab --no-browser --ServerApp.ip=127.0.0.1 \
	    --ServerApp.port=$$port --ServerApp.port_retries=0 --IdentityProvider.token=$$token \
	    --ServerApp.root_dir="$(CURDIR)" --ServerApp.answer_yes=True $$([ "$$(id -u)" = 0 ] && echo --allow-root) \
	    --LabApp.default_url=/lab/tree/notebooks/minute_stats.ipynb

chaos: setup sample ## SIGKILL the live job >= 5 times while the loader streams the sample; check exactness (CHAOS_ARGS=)
	$(VPY) -m bench.chaos $(CHAOS_ARGS)

soak: setup sample ## the job live under 5,000 frames/s for 20 min: lag, RSS and live set, latency (SOAK_ARGS=)
	$(VPY) -m bench.soak $(SOAK_ARGS)

quarantine-purge: setup ## delete quarantine rows older than [quarantine] retention_days and vacuum (PURGE_ARGS=)
	./spark-submit.sh jobs/quarantine_purge.py $(PURGE_ARGS)

maintain: setup ## compact the settled dates' small files, checkpoint and clean the Delta logs, vacuum (MAINTAIN_ARGS=)
	$(VPY) jobs/maintain.py $(MAINTAIN_ARGS)

clean: kafka-down cluster-down ## stop the broker and the cluster, delete data and runtime state (keeps set-up)
	rm -rf data .run spark-warehouse

distclean: clean ## also delete the virtualenv and fetched jars
	rm -rf $(VENV) .deps java/target $(PLAIN_CONF)

bench-smoke: setup ## the benchmark harness on a tiny input (CI keeps it working)
	$(VPY) -m bench.run --frames 20000 --smoke
