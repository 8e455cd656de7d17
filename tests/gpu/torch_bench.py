#!/usr/bin/env python3
"""PyTorch peer of the GPU benchmark (tests/gpu/run.sh): Kaiming He's ResNet-50 v1 (the model
of tests/bench/torch_resnet50.py: stride 2 on the first 1x1 conv of each downsampling block,
conv1 with a bias, pool1 rounding up like Caffe) trained on the GPU.

  torch_bench.py ITERS BATCH:PRECISION:LAYOUT...

Each configuration runs in turn in this one process (one torch start-up); a failing one
prints an "error" line and the next one runs. PRECISION: fp32 (TF32 off in cuBLAS and cuDNN:
comparable with moka's fp32) or bf16 (autocast AMP, fp32 master weights, for reference). LAYOUT: nchw or channels_last. cudnn.benchmark is on
(PyTorch at its best). One timed step is forward + cross-entropy + backward, as `moka time`
(no parameter update); the SGD step is timed apart. Prints one line per configuration:
  result precision=P layout=L batch=N fwd_bwd_ms=X img_s=Y step_ms=Z peak_mib=M gpu="name"
"""
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_resnet50 import ResNet50v1  # noqa: E402


def bench(batch, prec, layout, iters):
    torch.manual_seed(1)
    dev = torch.device("cuda")
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    m = ResNet50v1()
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    m = m.to(dev).to(memory_format=mf).train()
    x = (torch.randn(batch, 3, 224, 224, device=dev) * 50).contiguous(memory_format=mf)
    label = torch.zeros(batch, dtype=torch.long, device=dev)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        if prec == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(m(x), label)
        else:
            loss = loss_fn(m(x), label)
        loss.backward()

    for _ in range(3):  # warm-up (cudnn.benchmark picks its algorithms here)
        fwd_bwd()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        fwd_bwd()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    peak = torch.cuda.max_memory_allocated() / 2**20
    t0 = time.perf_counter()
    for _ in range(iters):
        opt.step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) * 1e3 / iters
    print('result precision=%s layout=%s batch=%d fwd_bwd_ms=%.2f img_s=%.1f step_ms=%.2f '
          'peak_mib=%.0f gpu="%s" torch=%s' % (prec, layout, batch, ms, batch * 1e3 / ms, step_ms,
                                               peak, torch.cuda.get_device_name(), torch.__version__),
          flush=True)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    iters = int(sys.argv[1])
    if not torch.cuda.is_available():
        sys.exit("torch_bench: torch sees no CUDA device")
    # fp32 means fp32: no TF32 anywhere (bf16 runs use autocast, unaffected).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    for cfg in sys.argv[2:]:
        try:
            b, prec, layout = cfg.split(":")
            if prec not in ("fp32", "bf16") or layout not in ("nchw", "channels_last"):
                raise ValueError("bad configuration")
            bench(int(b), prec, layout, iters)
        except Exception as e:  # one failing configuration must not stop the others
            print("error config=%s %s: %s" % (cfg, type(e).__name__, e), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
