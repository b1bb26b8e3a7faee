# Two entry points that work on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgetl-installed
# The deploy runtime's oldest Python (JetPack 5 has 3.8): `make test` installs edgetl-runtime into a 3.8
# venv the way a Jetson user does, where such an interpreter exists; its tests skip, saying so, where not.
PY38 := $(shell for p in python3.8 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.8*/bin/python3.8; do \
  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 8)' 2>/dev/null && { command -v "$$p"; break; }; done)
RT38 := .venv-rt38

.PHONY: demo test install runtime38 emulator clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plots,tensorboard,mlflow,explain,qat,auto]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgetl demo

test: $(STAMP) runtime38 emulator
	$(PY) -m pytest -q --durations=15

runtime38: $(STAMP)
ifneq ($(PY38),)
	test -f $(RT38)/.edgetl-installed || { rm -rf $(RT38) && $(PY38) -m venv $(RT38) \
	  && $(RT38)/bin/python -m pip install --quiet --upgrade pip \
	  && $(RT38)/bin/python -m pip install --quiet './packaging/runtime[cpu]' && touch $(RT38)/.edgetl-installed; }
else
	@echo "no Python 3.8 interpreter (python3.8 or pyenv's 3.8.x): the edgetl-runtime on 3.8 tests will skip"
endif

# The INT8 tests that run ONNX Runtime on an emulated AVX2-only EPYC need QEMU's user mode: installed here
# where this is an x86-64 Debian/Ubuntu machine and we are root; elsewhere those tests skip, saying why.
emulator:
	@command -v qemu-x86_64 >/dev/null || { [ "$$(uname -m)" = x86_64 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq qemu-user >/dev/null 2>&1 \
	       || { apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null 2>&1; }; } \
	  || echo "qemu-user could not be installed: the emulated AVX2-only CPU tests will skip"; }

clean:
	rm -rf $(VENV) $(RT38) runs .pytest_cache
