#!/usr/bin/env python3
"""Benchmark nets made from data/ResNet-50-deploy.prototxt (Kaiming He's v1).

  gen_prototxt.py deploy DEPLOY BATCH OUT   the deploy net with its input batch set to BATCH
                                            (an Input net: moka time fills it with noise,
                                            pycaffe/PyTorch feed random data)
  gen_prototxt.py train DEPLOY BATCH OUT    a training net that needs no data: DummyData tops
                                            'data' (BATCH,3,224,224) gaussian N(0, 50^2),
                                            refilled every pass, and 'label' (BATCH) constant 0;
                                            BatchNorm on batch statistics (use_global_stats
                                            removed: the phase decides); MSRA weight fillers on
                                            every Convolution/InnerProduct; Softmax 'prob'
                                            replaced by SoftmaxWithLoss 'loss'. Both
                                            `caffe time` and `moka time` run it as it is.
Text edits only, so that the layers are exactly the deploy file's.
"""
import re
import sys


def deploy(text, batch):
    out, n = re.subn(r"input_dim:\s*\d+", "input_dim: %d" % batch, text, count=1)
    if n != 1:
        sys.exit("gen_prototxt: no input_dim in the deploy file")
    return out


def train(text, batch):
    # drop the legacy input header
    text = re.sub(r'^input:.*\n', "", text, flags=re.M)
    text = re.sub(r'^input_dim:.*\n', "", text, flags=re.M)
    text = re.sub(r"\s*use_global_stats:\s*true", "", text)
    filler = '\n\t\tweight_filler {\n\t\t\ttype: "msra"\n\t\t}'
    text, nc = re.subn(r"(convolution_param\s*\{)", r"\1" + filler, text)
    text, ni = re.subn(r"(inner_product_param\s*\{)", r"\1" + filler, text)
    if nc != 53 or ni != 1:
        sys.exit("gen_prototxt: expected 53 convolutions and 1 fc, found %d and %d" % (nc, ni))
    prob = re.compile(r'layer\s*\{\s*bottom:\s*"fc1000"\s*top:\s*"prob"\s*name:\s*"prob"\s*'
                      r'type:\s*"Softmax"\s*\}')
    loss = ('layer {\n\tbottom: "fc1000"\n\tbottom: "label"\n\ttop: "loss"\n\tname: "loss"\n'
            '\ttype: "SoftmaxWithLoss"\n}')
    text, n = prob.subn(loss, text)
    if n != 1:
        sys.exit("gen_prototxt: no Softmax 'prob' layer after fc1000")
    name_end = text.index("\n") + 1  # after the name: line
    data = ('layer {\n\tname: "data"\n\ttype: "DummyData"\n\ttop: "data"\n\ttop: "label"\n'
            '\tdummy_data_param {\n'
            '\t\tshape { dim: %d dim: 3 dim: 224 dim: 224 }\n\t\tshape { dim: %d }\n'
            '\t\tdata_filler { type: "gaussian" std: 50 }\n'
            '\t\tdata_filler { type: "constant" value: 0 }\n\t}\n}\n' % (batch, batch))
    return text[:name_end] + "\n" + data + text[name_end:]


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("deploy", "train"):
        sys.exit(__doc__)
    kind, src, batch, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    text = open(src).read()
    out = deploy(text, batch) if kind == "deploy" else train(text, batch)
    with open(dst, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main()
