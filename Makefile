PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE ?= S M

.PHONY: install run test examples bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/statusbatch run jobs/nightly.toml $(if $(AS_OF),--as-of $(AS_OF))
	@echo "Query it: $(BIN)/python -c \"import duckdb; print(duckdb.connect('out/statusbatch.duckdb', read_only=True).sql('select contact_status, count(*) from contact_status_latest group by all order by 2 desc'))\""

# one pytest worker per core: most tests are small runs whose time is Python's, on one core each
test: $(STAMP)
	$(BIN)/pytest -n auto --dist worksteal

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(foreach s,$(SCALE),--scale $(s))

clean:
	rm -rf out .pytest_cache
