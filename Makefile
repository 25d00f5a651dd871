# The few commands people type. Everything installs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The local embedder's torch, for the tests and the demo only (the image has none). Pinned and
# installed first: where pip finds a CPU wheel of it (PIP_FIND_LINKS) it takes that, elsewhere
# it takes the package index's build, which pulls several GB of CUDA libraries (about 3 minutes
# on a 2-core machine here) and still runs on the CPU. Set TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.13.0

IMAGE ?= localhost/knative-rag:dev

.PHONY: install test lint scan format demo bench image release lock sbom audit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev,local]'
	touch $@

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: lint scan
	$(PY) -m pytest

# Security scan of the rendered Knative manifests. checkov pins its own dependencies, so it
# gets a virtual environment of its own.
SCAN_VENV := .venv-checkov
$(SCAN_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet 'checkov>=3.2,<4'
	touch $@

scan: $(SCAN_VENV)/.installed-stamp
	rm -rf .rendered && mkdir -p .rendered
	for overlay in dev prod; do kubectl kustomize knative/overlays/$$overlay > .rendered/$$overlay.yaml || exit 1; done
	$(SCAN_VENV)/bin/checkov --directory .rendered --framework kubernetes --compact --quiet --skip-download

demo: install
	$(PY) scripts/demo.py

# Cold start, query speed and memory against LlamaIndex's default (about 5 minutes), the load
# time of a 100k x 768 artifact from a local store, then the cold start on demand from a
# range-serving S3 against Lance at 100k (about 10 minutes; for 1M:
# python bench/cold_path.py --chunks 1000000 --repeat 3). Writes bench/*.json and *.png.
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py
	$(PY) bench/load_time.py
	$(PY) bench/cold_path.py

# The runtime dependencies (pyproject's [project] dependencies), pinned with hashes for every
# platform: the image installs exactly these. Run after changing them in pyproject.toml.
LOCK := requirements.lock
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
		--generate-hashes --quiet --custom-compile-command "make lock" -o $(LOCK)

# A CycloneDX SBOM of what the image ships (the lock file, with knative-rag as root component).
sbom: install
	mkdir -p dist
	$(VENV)/bin/cyclonedx-py requirements $(LOCK) --pyproject pyproject.toml \
		--output-reproducible -o dist/sbom.cdx.json
	@echo "wrote dist/sbom.cdx.json"

# Known vulnerabilities in the locked runtime dependencies. Needs the package index's JSON API
# (pip-audit's vulnerability source); --strict fails when any package could not be checked.
audit: sbom
	$(VENV)/bin/pip-audit --strict --require-hashes --disable-pip --progress-spinner off \
		-r $(LOCK) --format columns

# One image for the function and the builder. Uses docker by default; after
# `source ../shared/tools/container-base.sh` it uses $BUILD (buildah), $BASE_IMAGE and $PIP_CERT_SECRET.
image:
	$${BUILD:-docker build} $${PIP_CERT_SECRET:-} $${BASE_IMAGE:+--build-arg BASE_IMAGE=$$BASE_IMAGE} -t $(IMAGE) .

# Blue-green between index versions in the prod overlay: make release STEP="green <index id>",
# then STEP="shift 10", STEP="promote" or STEP="rollback"; kubectl apply -k knative/overlays/prod.
release: install
	$(PY) -m scripts.release $(STEP)

clean:
	rm -rf .demo .rendered .mypy_cache .ruff_cache .pytest_cache dist
