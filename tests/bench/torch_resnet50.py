#!/usr/bin/env python3
"""PyTorch peer for tests/bench: Kaiming He's ResNet-50 v1 (the graph of
data/ResNet-50-deploy.prototxt: stride 2 on the first 1x1 conv of res3a/4a/5a
and on the shortcut, never on the 3x3 as in torchvision's v1.5; conv1 with a
bias; pool1 rounding up like Caffe), fp32 on the CPU.

  torch_resnet50.py forward BATCH ITERS RUNS LAYOUT   eval-mode inference
  torch_resnet50.py train   BATCH ITERS RUNS LAYOUT   forward + backward + SGD step
  torch_resnet50.py info                              versions and kernels

LAYOUT: nchw or channels_last. Prints one line
  result ms_per_batch=X [step_ms=Y] img_s=Z
with the best (lowest) mean over RUNS runs of ITERS timed iterations, after
one warm-up iteration. Inputs are N(0, 50^2) noise (never zeros). Weights are
MSRA, and BatchNorm running statistics are set from one batch of that noise
(as `moka import --fill=msra` calibrates them), so activations stay O(1).
"""
import ctypes
import sys
import time

import torch
import torch.nn as nn

torch.set_num_threads(2)


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.branch2a = nn.Conv2d(cin, mid, 1, stride=stride, bias=False)  # stride here (v1)
        self.bn2a = nn.BatchNorm2d(mid)
        self.branch2b = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2b = nn.BatchNorm2d(mid)
        self.branch2c = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2c = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.branch1 = None
        if stride != 1 or cin != cout:
            self.branch1 = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn2a(self.branch2a(x)))
        y = self.relu(self.bn2b(self.branch2b(y)))
        y = self.bn2c(self.branch2c(y))
        s = x if self.branch1 is None else self.branch1(x)
        return self.relu(y + s)


class ResNet50v1(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # 112 -> 56, as Caffe
        blocks, cin = [], 64
        for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                blocks.append(Bottleneck(cin, mid, mid * 4, stride if i == 0 else 1))
                cin = mid * 4
        self.blocks = nn.Sequential(*blocks)
        self.pool5 = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))
        x = self.pool5(self.blocks(x))
        return self.fc(torch.flatten(x, 1))


def make_model(batch, layout):
    torch.manual_seed(1)
    m = ResNet50v1()
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    m = m.to(memory_format=mf)
    x = (torch.randn(batch, 3, 224, 224) * 50).contiguous(memory_format=mf)
    # BatchNorm running statistics from one batch of the noise
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 1.0
    m.train()
    with torch.no_grad():
        m(x)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 0.1
    return m, x


def bench(step, iters, runs):
    step()  # warm-up
    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        ms = (time.perf_counter() - t0) * 1e3 / iters
        best = ms if best is None else min(best, ms)
    return best


def forward(batch, iters, runs, layout):
    m, x = make_model(batch, layout)
    m.eval()

    def step():
        with torch.no_grad():
            m(x)

    ms = bench(step, iters, runs)
    print("result ms_per_batch=%.2f img_s=%.3f" % (ms, batch * 1e3 / ms))


def train(batch, iters, runs, layout):
    m, x = make_model(batch, layout)
    m.train()
    label = torch.zeros(batch, dtype=torch.long)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    t_step = [0.0, 0]

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        loss_fn(m(x), label).backward()

    def full():
        fwd_bwd()
        t0 = time.perf_counter()
        opt.step()
        t_step[0] += time.perf_counter() - t0
        t_step[1] += 1

    ms_fb = bench(fwd_bwd, iters, runs)
    t_step[:] = [0.0, 0]
    ms_full = bench(full, iters, 1)
    step_ms = t_step[0] * 1e3 / max(t_step[1], 1)
    print("result ms_per_batch=%.2f step_ms=%.2f full_ms_per_batch=%.2f img_s=%.3f"
          % (ms_fb, step_ms, ms_full, batch * 1e3 / ms_fb))


def info():
    ob = ctypes.CDLL("libopenblas.so.0")  # the instance torch's libblas loaded
    ob.openblas_get_corename.restype = ctypes.c_char_p
    ob.openblas_get_config.restype = ctypes.c_char_p
    print("torch %s, %d threads; BLAS: %s, kernel %s; mkldnn (oneDNN) enabled: %s"
          % (torch.__version__, torch.get_num_threads(), ob.openblas_get_config().decode(),
             ob.openblas_get_corename().decode(), torch.backends.mkldnn.is_available()))


def main():
    a = sys.argv[1:]
    if a == ["info"]:
        return info()
    if len(a) != 5 or a[0] not in ("forward", "train") or a[4] not in ("nchw", "channels_last"):
        sys.exit(__doc__)
    fn = forward if a[0] == "forward" else train
    fn(int(a[1]), int(a[2]), int(a[3]), a[4])


if __name__ == "__main__":
    main()
