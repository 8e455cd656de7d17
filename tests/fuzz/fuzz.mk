# tests/fuzz/fuzz.mk — libFuzzer harnesses (included by the Makefile).
#
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="prototxt image"]
#                     run each target for FUZZ_SECONDS; new inputs go to
#                     $(BUILD)/fuzz/corpus/<target>, crashes to
#                     $(BUILD)/fuzz/artifacts/<target>/
#   make fuzz-ci      the same, FUZZ_CI_SECONDS (20) per target: CI
#   make fuzz-build   only build $(BUILD)/fuzz/fuzz_<target>
#
# Each target is tests/fuzz/fuzz_<target>.c (see tests/fuzz/fuzz.h). The
# library is compiled again with clang, coverage-instrumented
# (-fsanitize=fuzzer-no-link) and with ASan + UBSan, into $(BUILD)/fuzzobj;
# no OpenMP (one thread is what libFuzzer wants) and no CUDA. Seeds: the
# committed tests/fuzz/corpus/<target>/ plus larger files from ../shared
# copied at run time (tests/fuzz/run.sh, which also holds the per-target
# libFuzzer options). A crash found becomes
# tests/fuzz/regress/<target>/<name>, replayed by `make test`
# (tests/unit/test_fuzz_regress.c).

FUZZ_CC          ?= clang
FUZZ_SECONDS     ?= 60
FUZZ_CI_SECONDS  ?= 20
FUZZ_TARGETS     ?= prototxt caffemodel blobproto solverstate datum image listfile flags
FUZZ_SHARED      ?= ../shared
FUZZ_DIR         := $(BUILD)/fuzz
FUZZ_OBJDIR      := $(BUILD)/fuzzobj
FUZZ_SAN         := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS      := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Wno-unused-parameter \
                    -Wno-missing-field-initializers -Wno-unknown-pragmas -MMD -MP $(FUZZ_SAN) \
                    -Isrc -I$(BUILD)/proto -I/usr/include/openblas -Ikernels -Itests/fuzz
FUZZ_LIBS        := -lprotobuf-c -llmdb -lturbojpeg -lpng -lopenblas -lm -lpthread -lgomp
FUZZ_LIB_OBJS    := $(patsubst %.c,$(FUZZ_OBJDIR)/%.o,$(LIB_SRCS)) $(FUZZ_OBJDIR)/proto/caffe.pb-c.o
FUZZ_BINS        := $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_TARGETS))
# Where flag parsing lives (the CLI is not part of the library).
FUZZ_EXTRA_flags := src/cli/flags.c

.PHONY: fuzz fuzz-ci fuzz-build fuzz-check
# (built through pattern rules only: keep them between runs)
.SECONDARY: $(FUZZ_LIB_OBJS)

fuzz-check:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { echo "moka fuzz: $(FUZZ_CC) not found; as root:" \
	  "apt-get install -y clang libclang-rt-14-dev (libFuzzer)"; exit 1; }

$(FUZZ_OBJDIR)/proto/caffe.pb-c.o: $(PROTO_C) | fuzz-check
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

# clang ignores `#pragma GCC target`: the files with AVX-512 sections (the
# GEMMs, the fast BatchNorm, convolution, pooling and Winograd, the fused chains) get the flags on the
# command line (their AVX-512 code only runs after a runtime CPU check in gcc
# builds; these fuzz builds run on the AVX-512 build machine).
$(FUZZ_OBJDIR)/src/layers/gemm_f32.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq
$(FUZZ_OBJDIR)/src/layers/gemm_bf16.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mbmi2
$(FUZZ_OBJDIR)/src/layers/convolution_bf16.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mbmi2
$(FUZZ_OBJDIR)/src/layers/batchnorm_fast.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512vl -mavx512dq
$(FUZZ_OBJDIR)/src/layers/bn_nhwc_cpu.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
$(FUZZ_OBJDIR)/src/layers/conv_nhwc_bf16.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
$(FUZZ_OBJDIR)/src/layers/conv_nhwc_amx.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
$(FUZZ_OBJDIR)/src/layers/nhwc_layout.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
$(FUZZ_OBJDIR)/src/layers/convolution_fast.o: FUZZ_FILE_FLAGS := -mavx512f
$(FUZZ_OBJDIR)/src/layers/pooling_fast.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
$(FUZZ_OBJDIR)/src/layers/split_fast.o: FUZZ_FILE_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
$(FUZZ_OBJDIR)/src/layers/conv_winograd.o: FUZZ_FILE_FLAGS := -mavx512f
$(FUZZ_OBJDIR)/src/net_fuse.o: FUZZ_FILE_FLAGS := -mavx512f

$(FUZZ_OBJDIR)/%.o: %.c $(PROTO_H) | fuzz-check
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_FILE_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_LIB_OBJS)
	@mkdir -p $(dir $@)
	@echo "  FUZZLD  $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DMOKA_LIBFUZZER $< $(FUZZ_EXTRA_$*) \
	  $(FUZZ_LIB_OBJS) $(FUZZ_LIBS) -o $@

fuzz-build: $(FUZZ_BINS)

fuzz: $(FUZZ_BINS)
	@FUZZ_DIR=$(FUZZ_DIR) FUZZ_SHARED=$(FUZZ_SHARED) sh tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-ci: $(FUZZ_BINS)
	@FUZZ_DIR=$(FUZZ_DIR) FUZZ_SHARED=$(FUZZ_SHARED) sh tests/fuzz/run.sh $(FUZZ_CI_SECONDS) $(FUZZ_TARGETS)

-include $(shell find $(FUZZ_OBJDIR) $(FUZZ_DIR) -name '*.d' 2>/dev/null)
