# One entry point for set-up, tests and the demo. Every target builds .venv itself.
PYTHON ?= python3.12
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo lint clean gpu-wheels

# Beyond PyPI: vspreview's Qt (QtMultimedia) links PulseAudio's client library, and tests/test_vspreview.py
# runs vspreview under Xvfb, where Qt's xcb platform needs these xcb libraries.
SYSTEM_PACKAGES := libpulse0 xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xinput0 libxcb-xkb1 libxkbcommon-x11-0

$(STAMP): pyproject.toml constraints.txt
	@.ci/system-packages $(SYSTEM_PACKAGES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	@# vspipe finds its Python through a per-user config file that this writes.
	$(VENV)/bin/vapoursynth config >&2
	@touch $(STAMP)

# The demo needs the worker, erdn deblur's video tools and the sample's makers (pyproject's `demo` extra): no Ray,
# vspreview, test tools or system packages. Where `make test` installed everything already, this is a quick no-op.
$(DEMO_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[demo]'
	$(VENV)/bin/vapoursynth config >&2
	@touch $(DEMO_STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: $(DEMO_STAMP)
	$(VENV)/bin/erdn demo

# Wheels a lent GPU machine lacks, into gpu_wheels/ (ignored), to carry to it (docs/gpu-session.md).
gpu-wheels: $(STAMP)
	$(PY) benchmarks/gpu_wheels.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
