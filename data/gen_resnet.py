#!/usr/bin/env python3
"""Write Kaiming He's ResNet-50/101/152 deploy prototxts (the "v1" graph:
stride 2 on the first 1x1 conv of res3a/res4a/res5a and on the projection
shortcut; conv1 with a bias only in ResNet-50), in the same text layout as
the released files, so that `moka` ships its own model definitions.

    python3 data/gen_resnet.py 50 > data/ResNet-50-deploy.prototxt

tests/cli/test_models.sh checks that the output parses to exactly the same
NetParameter as the released ResNet-50/101/152 deploy files.
"""
import sys

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def layer(out, bottoms, top, name, typ, params=None, top_first=False):
    out.append("layer {")
    if top_first:
        out.append('\ttop: "%s"' % top)
    for b in bottoms:
        out.append('\tbottom: "%s"' % b)
    if not top_first:
        out.append('\ttop: "%s"' % top)
    out.append('\tname: "%s"' % name)
    out.append('\ttype: "%s"' % typ)
    if params:
        key, fields = params
        out.append("\t%s {" % key)
        for k, v in fields:
            out.append("\t\t%s: %s" % (k, v))
        out.append("\t}")
    out.append("}")
    out.append("")


def conv(out, bottom, name, num, k, pad, stride, bias):
    fields = [("num_output", num), ("kernel_size", k), ("pad", pad), ("stride", stride)]
    if not bias:
        fields.append(("bias_term", "false"))
    layer(out, [bottom], name, name, "Convolution", ("convolution_param", fields))


def bn_scale(out, blob, suffix):
    layer(out, [blob], blob, "bn" + suffix, "BatchNorm",
          ("batch_norm_param", [("use_global_stats", "true")]))
    layer(out, [blob], blob, "scale" + suffix, "Scale", ("scale_param", [("bias_term", "true")]))


TOP_FIRST_RELU = False  # the released 101/152 files list a ReLU's top first
# (except after the Eltwise sums)


def relu(out, blob, name, block_output=False):
    layer(out, [blob], blob, name, "ReLU", top_first=TOP_FIRST_RELU and not block_output)


def block_names(stage, n, depth):
    if depth == 50 or stage in (2, 5):
        return [chr(ord("a") + i) for i in range(n)]
    return ["a"] + ["b%d" % i for i in range(1, n)]


def resnet(depth):
    global TOP_FIRST_RELU
    TOP_FIRST_RELU = depth != 50
    out = ['name: "ResNet-%d"' % depth, 'input: "data"', "input_dim: 1", "input_dim: 3",
           "input_dim: 224", "input_dim: 224", ""]
    conv(out, "data", "conv1", 64, 7, 3, 2, bias=(depth == 50))
    layer(out, ["conv1"], "conv1", "bn_conv1", "BatchNorm",
          ("batch_norm_param", [("use_global_stats", "true")]))
    layer(out, ["conv1"], "conv1", "scale_conv1", "Scale", ("scale_param", [("bias_term", "true")]))
    relu(out, "conv1", "conv1_relu")
    layer(out, ["conv1"], "pool1", "pool1", "Pooling",
          ("pooling_param", [("kernel_size", 3), ("stride", 2), ("pool", "MAX")]))
    prev = "pool1"
    for s, n in enumerate(BLOCKS[depth]):
        stage = s + 2
        width = 64 * 2 ** s
        for i, b in enumerate(block_names(stage, n, depth)):
            res = "res%d%s" % (stage, b)
            stride = 2 if (i == 0 and stage > 2) else 1
            if i == 0:
                conv(out, prev, res + "_branch1", width * 4, 1, 0, stride, False)
                bn_scale(out, res + "_branch1", "%d%s_branch1" % (stage, b))
                short = res + "_branch1"
            else:
                short = prev
            conv(out, prev, res + "_branch2a", width, 1, 0, stride, False)
            bn_scale(out, res + "_branch2a", "%d%s_branch2a" % (stage, b))
            relu(out, res + "_branch2a", res + "_branch2a_relu")
            conv(out, res + "_branch2a", res + "_branch2b", width, 3, 1, 1, False)
            bn_scale(out, res + "_branch2b", "%d%s_branch2b" % (stage, b))
            relu(out, res + "_branch2b", res + "_branch2b_relu")
            conv(out, res + "_branch2b", res + "_branch2c", width * 4, 1, 0, 1, False)
            bn_scale(out, res + "_branch2c", "%d%s_branch2c" % (stage, b))
            layer(out, [short, res + "_branch2c"], res, res, "Eltwise")
            relu(out, res, res + "_relu", block_output=True)
            prev = res
    layer(out, [prev], "pool5", "pool5", "Pooling",
          ("pooling_param", [("kernel_size", 7), ("stride", 1), ("pool", "AVE")]))
    layer(out, ["pool5"], "fc1000", "fc1000", "InnerProduct",
          ("inner_product_param", [("num_output", 1000)]))
    layer(out, ["fc1000"], "prob", "prob", "Softmax")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if depth not in BLOCKS:
        sys.exit("depth must be one of 50, 101, 152")
    sys.stdout.write(resnet(depth))
