#!/usr/bin/env python3
"""PyTorch bf16 peer for tests/bench/fast.sh: the ResNet-50 v1 of
torch_resnet50.py under CPU autocast (torch.autocast("cpu", dtype=torch.bfloat16):
convolutions and the fc in bf16 through oneDNN, fp32 master weights,
BatchNorm in fp32), the usual way to train in bf16 on a CPU with PyTorch.

  torch_resnet50_bf16.py forward BATCH ITERS RUNS LAYOUT   eval-mode inference
  torch_resnet50_bf16.py train   BATCH ITERS RUNS LAYOUT   forward + backward (+ SGD step)

Prints the same "result ..." line as torch_resnet50.py.
"""
import sys

import torch
import torch.nn as nn

import torch_resnet50 as base


def forward(batch, iters, runs, layout):
    m, x = base.make_model(batch, layout)
    m.eval()

    def step():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)

    ms = base.bench(step, iters, runs)
    print("result ms_per_batch=%.2f img_s=%.3f" % (ms, batch * 1e3 / ms))


def train(batch, iters, runs, layout):
    m, x = base.make_model(batch, layout)
    m.train()
    label = torch.zeros(batch, dtype=torch.long)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(m(x), label)
        loss.backward()

    ms_fb = base.bench(fwd_bwd, iters, runs)
    print("result ms_per_batch=%.2f img_s=%.3f" % (ms_fb, batch * 1e3 / ms_fb))


def main():
    a = sys.argv[1:]
    if len(a) != 5 or a[0] not in ("forward", "train") or a[4] not in ("nchw", "channels_last"):
        sys.exit(__doc__)
    (forward if a[0] == "forward" else train)(int(a[1]), int(a[2]), int(a[3]), a[4])


if __name__ == "__main__":
    main()
