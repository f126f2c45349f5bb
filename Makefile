# vpose_d2: one entry point. `make setup` is idempotent; every target uses .venv/.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
# torch.utils.cpp_extension guesses CUDA_HOME from `which nvcc`; a wrapper script in
# /usr/local/bin makes it guess /usr/local. Point it at the real toolkit when there is one.
ifeq ($(origin CUDA_HOME), undefined)
  ifneq ($(wildcard /usr/local/cuda/include/cuda_runtime.h),)
    export CUDA_HOME := /usr/local/cuda
  endif
endif
export MAX_JOBS ?= 2

.PHONY: setup test demo benchmark format clean gpu-wheels

setup: .venv/.setup-done

.venv/.setup-done: requirements.txt setup.py $(wildcard csrc/*.* csrc/*/*.*) tools/install_detectron2.sh
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --disable-pip-version-check -r requirements.txt
	bash tools/install_detectron2.sh $(PY)
	$(PIP) install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	$(PY) -c "import vpose_d2, vpose_d2._C; print('vpose_d2 ready:', vpose_d2.__file__)"
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/run_main_job.py

benchmark: setup
	$(PY) tools/benchmark_ops.py

# Wheels the lent GPU machine lacks (Detectron2 and its requirements), for tools/gpu_check.sh:
# carry gpu_wheels/ with the device call. Needs the package registry; checks the folder after.
gpu-wheels:
	$(PY) tools/gpu_check.py wheels --dir gpu_wheels

format:
	$(PY) -m black -l 100 vpose_d2 tools tests demo setup.py
	$(PY) -m isort --profile black -l 100 vpose_d2 tools tests demo setup.py

clean:
	rm -rf build *.egg-info vpose_d2/_C*.so .venv/.setup-done
