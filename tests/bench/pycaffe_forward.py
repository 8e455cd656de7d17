#!/usr/bin/env python3
"""Caffe 1.0 inference timing through pycaffe (run inside caffe-peer):

  caffe-peer python3 pycaffe_forward.py DEPLOY WEIGHTS ITERS
  caffe-peer python3 pycaffe_forward.py info     (the OpenBLAS in use: "blas: ...")

Builds DEPLOY in the TEST phase with WEIGHTS (the same files `moka time
--forward_only` gets), fills the input with N(0, 50^2) noise once (as moka
time does), runs one warm-up forward, then ITERS timed forwards. `caffe time`
cannot load weights and runs the TRAIN phase, so this is the like-for-like
inference figure. Prints: result ms_per_batch=X img_s=Y
"""
import ctypes
import sys
import time

import numpy as np
import caffe


def info():
    ob = ctypes.CDLL("libopenblas.so.0")
    ob.openblas_get_corename.restype = ctypes.c_char_p
    ob.openblas_get_config.restype = ctypes.c_char_p
    print("blas: %s; kernel in use: %s" % (ob.openblas_get_config().decode(),
                                           ob.openblas_get_corename().decode()))


def main():
    if sys.argv[1:] == ["info"]:
        return info()
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    proto, weights, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
    caffe.set_mode_cpu()
    net = caffe.Net(proto, caffe.TEST, weights=weights)
    name = net.inputs[0]
    x = net.blobs[name].data
    x[...] = np.random.RandomState(1).normal(0.0, 50.0, x.shape)
    batch = x.shape[0]
    net.forward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        net.forward()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    print("result ms_per_batch=%.2f img_s=%.3f" % (ms, batch * 1e3 / ms))


if __name__ == "__main__":
    main()
