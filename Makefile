# The two commands: `make up` runs Logloom, `make test` runs the test suite.
# Both create .venv and install Logloom (with the dev extra) on first use.
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

C_PLUGINS := $(patsubst %.c,%.so,$(filter-out plugins/c/sink_kafka.c,$(wildcard plugins/c/*.c)))
# The Kafka exporter needs librdkafka (apt-get install librdkafka-dev); without it, it is skipped.
RDKAFKA_LIBS ?= -lrdkafka
KAFKA_PLUGIN := $(if $(wildcard /usr/include/librdkafka/rdkafka.h),plugins/c/liblog_exporter_kafka.so)

.PHONY: up test lint bench profile plugins test-plugins
up: $(BIN)/.installed
	$(BIN)/logloom up --demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The bundled C plugins, built against the header the package ships.
plugins: $(C_PLUGINS) $(KAFKA_PLUGIN)
	$(if $(KAFKA_PLUGIN),,@echo "plugins/c/liblog_exporter_kafka.so skipped: no librdkafka-dev")
plugins/c/%.so: plugins/c/%.c plugins/c/config_json.h pipeline/include/logloom_plugin.h
	$(CC) -Ipipeline/include -shared -fPIC -O2 -Wall -Wextra -o $@ $<
plugins/c/liblog_exporter_kafka.so: plugins/c/sink_kafka.c plugins/c/config_json.h pipeline/include/logloom_plugin.h
	$(CC) -Ipipeline/include -shared -fPIC -O2 -Wall -Wextra -o $@ $< $(RDKAFKA_LIBS)

# The plugin tests of design §8.3: every runtime through the real pipeline, failures included.
test-plugins: $(BIN)/.installed
	$(BIN)/pytest -m plugins

# Throughput ratios, scale-out, then latency (30 s) and memory with a slow sink (2 min):
# README "Performance".
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.scaleout
	$(BIN)/python -m benchmarks.latency
	$(BIN)/python -m benchmarks.memory

# Where a filter worker's time goes: a py-spy flame graph of the filter worker figure.
profile: $(BIN)/.installed
	$(BIN)/py-spy record --idle -r 500 -o filter-worker.svg -- $(BIN)/python -m benchmarks.profile
