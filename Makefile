# moka — one Makefile. Switches (override on the command line: make DEBUG=1):
CUDA      ?= auto      # auto: build the CUDA backend when nvcc exists; 0: never; 1: required
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
DEBUG     ?= 0         # 1: -O0 -g, and synchronise after every CUDA launch
SANITIZE  ?= 0         # 1: AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer)
BUILD     ?= build     # output folder (nothing generated is ever committed)
NVCC      ?= nvcc
CC        ?= gcc

# Debian packages moka builds against. `make deps` installs the missing ones
# (as root) or prints the exact apt-get line.
DEB_PACKAGES := build-essential pkg-config libprotobuf-c-dev protobuf-c-compiler liblmdb-dev \
                libturbojpeg0-dev libpng-dev libopenblas-dev

CUDA      := $(strip $(CUDA))
DEBUG     := $(strip $(DEBUG))
SANITIZE  := $(strip $(SANITIZE))
BUILD     := $(strip $(BUILD))

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -fopenmp -MMD -MP
ifeq ($(DEBUG),1)
  CFLAGS_OPT := -O0 -g -DMOKA_DEBUG=1
else
  CFLAGS_OPT := -O2 -g -march=x86-64-v3 -mtune=native
endif
ifeq ($(SANITIZE),1)
  CFLAGS_OPT += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS_SAN := -fsanitize=address,undefined
endif

INCLUDES := -Isrc -I$(BUILD)/proto -I/usr/include/openblas -Ikernels
LIBS     := -lprotobuf-c -llmdb -lturbojpeg -lpng -lopenblas -lm -lpthread -fopenmp

# ---- dependency probes: one visible line each --------------------------------------------
define probe_header
$(if $(wildcard $(1)),found,MISSING)
endef
PROBE_PROTOBUFC := $(call probe_header,/usr/include/protobuf-c/protobuf-c.h)
PROBE_PROTOCC   := $(if $(shell command -v protoc-c 2>/dev/null),found,MISSING)
PROBE_LMDB      := $(call probe_header,/usr/include/lmdb.h)
PROBE_TURBOJPEG := $(call probe_header,/usr/include/turbojpeg.h)
PROBE_PNG       := $(call probe_header,/usr/include/png.h)
PROBE_OPENBLAS  := $(if $(wildcard /usr/include/*/cblas.h /usr/include/cblas.h /usr/include/openblas/cblas.h /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h),found,MISSING)
NVCC_PATH       := $(shell command -v $(NVCC) 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))

ifeq ($(CUDA),0)
  WITH_CUDA := 0
else ifneq ($(NVCC_PATH),)
  WITH_CUDA := 1
else ifeq ($(CUDA),1)
  $(error CUDA=1 was asked for but nvcc was not found (set NVCC=/path/to/nvcc))
else
  WITH_CUDA := 0
endif

# ---- sources ------------------------------------------------------------------------------
LIB_SRCS  := $(wildcard src/*.c src/layers/*.c src/data/*.c src/finetune/*.c)
LIB_SRCS  := $(filter-out src/main.c,$(LIB_SRCS))
CLI_SRCS  := src/main.c $(wildcard src/cli/*.c)
PROTO_C   := $(BUILD)/proto/caffe.pb-c.c
PROTO_H   := $(BUILD)/proto/caffe.pb-c.h
LIB_OBJS  := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRCS)) $(BUILD)/obj/proto/caffe.pb-c.o
CLI_OBJS  := $(patsubst %.c,$(BUILD)/obj/%.o,$(CLI_SRCS))
TEST_SRCS := $(wildcard tests/unit/test_*.c)
TEST_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
# GPU tests: built and run by `make test` everywhere; without a GPU they print SKIP.
GPU_TEST_SRCS := $(wildcard tests/gpu/test_*.c)
TEST_BINS += $(patsubst tests/gpu/%.c,$(BUILD)/tests/%,$(GPU_TEST_SRCS))
# CUDA kernels emulated on the CPU (C++, no GPU needed): conv_igemm.cu, conv_nhwc.cu, bn_nhwc.cu.
TEST_BINS += $(BUILD)/tests/igemm_emulate $(BUILD)/tests/nhwc_emulate $(BUILD)/tests/bn_nhwc_emulate
TOOL_SRCS := $(wildcard tests/tools/*.c)
TOOL_BINS := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(TOOL_SRCS))

CU_SRCS   := $(wildcard kernels/*.cu)
ifeq ($(WITH_CUDA),1)
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC_PATH))
  CU_OBJS   := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRCS))
  LIB_OBJS  += $(CU_OBJS)
  INCLUDES  += -I$(CUDA_HOME)/include
  LIBS      += -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lcudnn -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64
  CFLAGS_BASE += -DMOKA_WITH_CUDA=1
endif

CFLAGS  := $(CFLAGS_BASE) $(CFLAGS_OPT) $(INCLUDES) $(EXTRA_CFLAGS)
LDFLAGS := $(LDFLAGS_SAN) $(EXTRA_LDFLAGS)

.PHONY: all probe deps demo test test-unit test-golden test-opencv clean gpu-check bench help
all: probe $(BUILD)/moka $(TOOL_BINS)

probe:
	@echo "moka build: BUILD=$(BUILD) DEBUG=$(DEBUG) SANITIZE=$(SANITIZE) CUDA=$(CUDA) -> $(if $(filter 1,$(WITH_CUDA)),with CUDA ($(NVCC_PATH)),CPU only)"
	@echo "  protobuf-c (libprotobuf-c-dev) ........ $(PROBE_PROTOBUFC)"
	@echo "  protoc-c (protobuf-c-compiler) ........ $(PROBE_PROTOCC)"
	@echo "  LMDB (liblmdb-dev) .................... $(PROBE_LMDB)"
	@echo "  libjpeg-turbo (libturbojpeg0-dev) ..... $(PROBE_TURBOJPEG)"
	@echo "  libpng (libpng-dev) ................... $(PROBE_PNG)"
	@echo "  OpenBLAS (libopenblas-dev) ............ $(PROBE_OPENBLAS)"
	@echo "  CUDA toolkit (nvcc) ................... $(if $(NVCC_PATH),found ($(NVCC_PATH)),not found: CPU-only build)"
	@if [ "$(PROBE_PROTOBUFC)$(PROBE_PROTOCC)$(PROBE_LMDB)$(PROBE_TURBOJPEG)$(PROBE_PNG)$(PROBE_OPENBLAS)" != "foundfoundfoundfoundfoundfound" ]; then \
	  echo "moka: missing build dependencies; run 'make deps' (as root) or:"; \
	  echo "  apt-get install -y $(DEB_PACKAGES)"; exit 1; fi

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "moka: all build dependencies are installed"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "moka: installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
	  echo "moka: missing Debian packages:$$missing"; \
	  echo "run as root:  apt-get install -y$$missing"; exit 1; \
	fi

$(PROTO_C) $(PROTO_H) &: proto/caffe.proto
	@mkdir -p $(BUILD)/proto
	protoc-c --c_out=$(BUILD)/proto --proto_path=proto proto/caffe.proto
	@# ExpParameter/LogParameter have a field named 'base', which clashes with the
	@# ProtobufCMessage header member protoc-c puts in every struct: the C member
	@# becomes 'base_' (descriptors, and so the text and wire formats, keep 'base').
	@sed -i 's/^  float base;$$/  float base_;/' $(PROTO_H)
	@sed -i 's/offsetof(Caffe__\(Exp\|Log\)Parameter, base)/offsetof(Caffe__\1Parameter, base_)/' $(PROTO_C)

$(BUILD)/obj/proto/caffe.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Wno-unused-parameter -c $< -o $@

$(BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/kernels/%.o: kernels/%.cu kernels/*.h
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 $(CUDA_ARCH) -Ikernels -Isrc -I$(BUILD)/proto $(if $(filter 1,$(DEBUG)),-G -DMOKA_DEBUG=1,) -Xcompiler -fPIC -MMD -MP -MF $(@:.o=.d) $(EXTRA_NVCCFLAGS) -c $< -o $@

$(BUILD)/libmoka.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/moka: $(CLI_OBJS) $(BUILD)/libmoka.a
	$(CC) $(LDFLAGS) $(CLI_OBJS) -Wl,--whole-archive $(BUILD)/libmoka.a -Wl,--no-whole-archive $(LIBS) -o $@

$(BUILD)/tests/%: tests/unit/%.c tests/unit/testlib.h tests/unit/resnet_nets.h tests/unit/bf16_kernel_sets.h tests/gpu/bf16_host.h $(BUILD)/libmoka.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $< -Wl,--whole-archive $(BUILD)/libmoka.a -Wl,--no-whole-archive $(LDFLAGS) $(LIBS) -o $@

$(BUILD)/tests/%: tests/gpu/%.c tests/unit/testlib.h tests/unit/resnet_nets.h tests/gpu/gputest.h tests/gpu/bf16_host.h $(BUILD)/libmoka.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $< -Wl,--whole-archive $(BUILD)/libmoka.a -Wl,--no-whole-archive $(LDFLAGS) $(LIBS) -o $@

$(BUILD)/tests/igemm_emulate: tests/gpu/igemm_emulate.cpp tests/gpu/emu_cuda.h tests/gpu/bf16_host.h kernels/conv_igemm.cu kernels/conv_igemm_index.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-function $< -o $@

$(BUILD)/tests/nhwc_emulate: tests/gpu/nhwc_emulate.cpp tests/gpu/emu_cuda.h tests/gpu/bf16_host.h kernels/conv_nhwc.cu kernels/conv_nhwc_ptx.h kernels/conv_igemm_index.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-function $< -o $@

$(BUILD)/tests/bn_nhwc_emulate: tests/gpu/bn_nhwc_emulate.cpp tests/gpu/emu_cuda.h tests/gpu/bf16_host.h kernels/bn_nhwc.cu
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-function $< -o $@

# Benchmark programs that link the library (tests/bench/*.sh build them with make).
$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libmoka.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -Wl,--whole-archive $(BUILD)/libmoka.a -Wl,--no-whole-archive $(LDFLAGS) $(LIBS) -o $@

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libmoka.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $< -Wl,--whole-archive $(BUILD)/libmoka.a -Wl,--no-whole-archive $(LDFLAGS) $(LIBS) -o $@

# ---- the README's two commands --------------------------------------------------------------
demo: deps
	@$(MAKE) --no-print-directory all
	@sh data/demo.sh $(BUILD)

test: probe $(BUILD)/moka $(TOOL_BINS) $(TEST_BINS)
	@BUILD=$(BUILD) sh tests/run.sh $(TEST_BINS)

gpu-check:
	@sh tests/gpu/run.sh

bench: $(BUILD)/moka
	@sh tests/bench/forward.sh $(BUILD)

help:
	@echo "make            build $(BUILD)/moka (prints a found/MISSING line per dependency)"
	@echo "make deps       install missing Debian packages (root) or print the apt-get line"
	@echo "make demo       deps + build + the fine-tuning demo (data/demo.sh, ~3 min on 2 cores)"
	@echo "make test       unit, golden and CLI tests (no GPU needed)"
	@echo "make gpu-check  build and run every GPU test and benchmark (needs a GPU)"
	@echo "make bench      forward benchmark against Caffe and PyTorch"
	@echo "switches: CUDA=auto|0|1 CUDA_ARCH=... DEBUG=0|1 SANITIZE=0|1 BUILD=dir"

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
-include tests/fuzz/fuzz.mk
