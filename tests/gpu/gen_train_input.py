#!/usr/bin/env python3
"""ResNet-50 (Kaiming He's v1) training net for the GPU benchmark, fed by Input layers.

  gen_train_input.py DEPLOY BATCH OUT

The same net as tests/bench/gen_prototxt.py train (MSRA fillers, BatchNorm on batch
statistics, SoftmaxWithLoss), but with an Input layer (tops 'data' (BATCH,3,224,224) and
'label' (BATCH)) instead of DummyData: `moka time` fills the 4-D input with N(0, 50^2) noise
once, and labels stay 0. DummyData's gaussian filler is redrawn on the CPU at every pass,
which on a GPU run would time the host's random number generator instead of the GPU.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import gen_prototxt  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, batch, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    text = gen_prototxt.train(open(src).read(), batch)
    dummy = re.compile(r'layer \{\n\tname: "data"\n\ttype: "DummyData".*?\n\}\n', re.S)
    inp = ('layer {\n\tname: "data"\n\ttype: "Input"\n\ttop: "data"\n\ttop: "label"\n'
           '\tinput_param {\n\t\tshape { dim: %d dim: 3 dim: 224 dim: 224 }\n'
           '\t\tshape { dim: %d }\n\t}\n}\n' % (batch, batch))
    text, n = dummy.subn(inp, text, count=1)
    if n != 1:
        sys.exit("gen_train_input: no DummyData layer in gen_prototxt's output")
    with open(dst, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
