/* net_fuse.h — net-level fusion of BatchNorm -> Scale (-> ReLU) chains, and of
 * the residual end BatchNorm -> Scale -> Eltwise SUM (-> ReLU), as Kaiming's
 * ResNet prototxts write them. Fast CPU backend (src/net_fuse.c) and, once
 * its author enables it, the CUDA backend (src/net_fuse_cuda.c).
 *
 * What is fused. At net set-up (net_create, and again after net_reshape),
 * net_fuse_plan looks for these patterns, all in place on one blob X:
 *
 *   BN_SCALE:         BatchNorm(X -> X), Scale(X -> X) [, ReLU(X -> X)]
 *   BN_SCALE_ELTWISE: BatchNorm(X -> X), Scale(X -> X),
 *                     Eltwise SUM(bottoms {X, R} in either order -> Y), coeffs 1
 *                     [, ReLU(Y -> Y)]
 *
 * where X (and Y) are read by no layer outside the chain (an extra reader
 * gets a Split in Caffe's net, so a different blob), the Scale is the
 * per-channel one (one bottom, scale and bias shaped (C) at axis 1), no
 * chain layer has a loss weight or an explicit propagate_down, and the
 * layers' backward flags are the ones Caffe's rules give (see
 * net_fuse.c). Anything else runs layer by layer, as before.
 *
 * The math (every chain on every backend must do exactly this). Per channel
 * c of x (N,C,S), m = N*S, gamma/beta = the Scale's parameters (beta = 0
 * without bias_term), slope = the ReLU's negative_slope:
 *   forward, TRAIN (batch statistics): mean, var (biased), the running
 *     statistics b0/b1/b2 updated with moving_average_fraction and the
 *     m/(m-1) correction, exactly as BatchNorm (batchnorm.c); std =
 *     sqrtf(var + eps) into the BN layer's priv (mean/var/std);
 *   forward, use_global_stats: mean/var from b0/b1/b2 as BatchNorm;
 *   then per element
 *     xhat = (x - mean) / std          -> BatchNorm's x_norm (kept for backward
 *                                          when the chain needs backward)
 *     z    = xhat * gamma + beta       (two float roundings, no FMA)
 *     BN_SCALE:         y = relu(z)                 -> X (in place)
 *     BN_SCALE_ELTWISE: X = z (the Scale's output stays visible, as unfused);
 *                       y = relu((0 + 1*b0) + 1*b1) with b0/b1 the Eltwise's
 *                       bottoms in their order    -> Y
 *     relu(v) = max(v,0) + slope*min(v,0), Caffe's expression.
 *   backward (dy = the chain output's diff, y its data):
 *     dz = dy * ((y > 0) + slope*(y <= 0))   (ReLU's in-place rule; dz = dy
 *                                              when there is no ReLU)
 *     BN_SCALE_ELTWISE: R.diff = dz (shortcut_bw)
 *     without BN backward: X.diff = dz (x_diff_dz), as the unfused layers leave it
 *     per channel: sdz = sum dz, sdzx = sum dz*xhat (double accumulators);
 *       dbeta += sdz (want_dbeta), dgamma += sdzx (want_dgamma);
 *     X.diff = dx (bn_bw):
 *       TRAIN:  dx = (dz*gamma - mean_a - mean_b*xhat) / std with
 *               mean_a = (float)(gamma*sdz/m), mean_b = (float)(gamma*sdzx/m)
 *       global: dx = (dz*gamma) / std
 *   The intermediate diffs (the ReLU's and Eltwise's tops, the Scale's
 *   output diff) are not written: no layer outside the chain reads them.
 *
 * Running. net_forward_layer / net_backward_layer (net.c) ask
 * net_fuse_forward_role / net_fuse_backward_role: a chain runs forward at
 * index fwd_at (its
 * BatchNorm, or its Eltwise for BN_SCALE_ELTWISE, when the shortcut is
 * ready) and backward at bwd_at (its last layer); its other layers do
 * nothing, so `moka time` shows the chain's whole time under those two
 * layers. Fusion is off when net->debug_info is set (per-layer values stay
 * Caffe's), on the reference backend (the oracle), and with MOKA_FUSE=0 in
 * the environment (A/B); a chain that net_forward_to would stop inside
 * runs unfused. A backward follows the forward's choice (a chain that ran
 * unfused forward runs unfused backward).
 *
 * Split sharing (fast CPU backend only): the plan also lists the Split
 * layers whose tops may share their bottom's data, as Caffe's Split does;
 * see net_fuse_split_share. And a two-top Split right after a chain, on
 * the chain's output y (a ResNet block's output feeding the next block's
 * branch and shortcut), is summed by the chain: its backward takes dy as
 * (top0 diff + top1 diff), the Split's own float additions, and the
 * Split's backward does nothing (y's diff, which only the chain would
 * read, is not written). Measured at batch 8: the Splits' 11 ms of
 * backward gone, the chains' backward 6-7 ms longer.
 *
 * CUDA (src/net_fuse_cuda.c, kernels/bn_fused.cu): the two functions under
 * MOKA_WITH_CUDA below, with the math above, on the BN layer's device buffers
 * (BatchNormPriv's dev_x_norm / dev_stats, src/layers/batchnorm_priv.h).
 * They skip the x_diff_dz write (nobody reads that diff). Building with
 * -DMOKA_FUSE_CUDA_READY=0 makes net_fuse_plan never fuse on the CUDA
 * backend (net.c then never calls them); MOKA_FUSE=0 does it at run time.
 */
#ifndef MOKA_NET_FUSE_H
#define MOKA_NET_FUSE_H

#include <stdbool.h>

#include "net.h"

/* CUDA fusion compiled in (see above). */
#ifndef MOKA_FUSE_CUDA_READY
#define MOKA_FUSE_CUDA_READY 1
#endif

typedef enum FusedKind {
  FUSED_BN_SCALE = 0,         /* BatchNorm -> Scale [-> ReLU], in place on x */
  FUSED_BN_SCALE_ELTWISE = 1  /* BatchNorm -> Scale -> Eltwise SUM [-> ReLU] */
} FusedKind;

typedef struct FusedChain {
  FusedKind kind;
  /* Layer indices in net->layers (-1: absent). */
  int bn, scale, eltwise, relu;
  int fwd_at;          /* the index where the chain's forward runs */
  int bwd_at;          /* the index where its backward runs (its last layer) */
  /* Blobs (owned by the net). */
  Blob *x;             /* (N,C,S) BN bottom = BN top = Scale bottom/top: in, then z */
  Blob *shortcut;      /* (N,C,S) the Eltwise's other bottom R; NULL for BN_SCALE */
  Blob *y;             /* (N,C,S) the chain's output: x (BN_SCALE) or the Eltwise top */
  int x_bottom;        /* BN_SCALE_ELTWISE: which Eltwise bottom x is (0 or 1) */
  /* Geometry, checked against the BN and Scale layers at planning. */
  size_t num, channels, spatial; /* N, C, S */
  /* Parameters (views into the net's flat parameter buffer). */
  Blob *gamma;         /* (C) Scale's params[0] */
  Blob *beta;          /* (C) Scale's bias, NULL without bias_term */
  bool has_relu;
  float slope;         /* ReLU negative_slope (0 without ReLU) */
  bool use_global_stats;
  /* Backward, decided at planning from the layers' flags. */
  bool need_backward;  /* anything at all to do in backward */
  bool relu_bw;        /* apply the ReLU mask to dy */
  bool want_dgamma, want_dbeta; /* Scale's lr_mult != 0 */
  bool bn_bw;          /* write dx into x's diff */
  bool x_diff_dz;      /* no BN backward, but x's diff gets dz, as unfused: the
                          ReLU's masked dy (BN_SCALE; frozen layers below) or
                          the Eltwise's copy (BN_SCALE_ELTWISE) */
  bool shortcut_bw;    /* BN_SCALE_ELTWISE: write dz into the shortcut's diff */
  bool keep_xhat;      /* forward writes BatchNorm's x_norm (backward needs it) */
  bool stream;         /* AVX-512 CPU: x_norm (forward) and the shortcut's gradient
                          (backward) written with non-temporal stores */
  int split;           /* fast CPU and CUDA: the two-top Split right after the chain
                          that reads y (-1: none); the chain's backward then takes dy as
                          that Split's sum of its tops' diffs, in its order, and the
                          Split's backward does nothing (see net_fuse_plan) */
  /* (x_diff_dz and bn_bw are never both set.) */
  /* Run time: the last forward ran this chain fused (backward follows). */
  bool ran_fused;
} FusedChain;

/* 1x1 convolutions with a stride reading one blob (fast CPU; ResNet's
 * downsampling pairs): the blob subsampled once per forward, read by their
 * forwards and weight gradients (ConvPriv.sub_x) instead of each gathering
 * it twice. */
typedef struct SubShare {
  int first;           /* the member that runs first: it makes the copy */
  const Blob *src;     /* the blob the members read (a shared Split's bottom) */
  int stride_h, stride_w;
  float *buf;          /* (N, C, OH, OW) */
  size_t cap;          /* floats at buf */
  const float *from;   /* the data the copy was made from (NULL: none yet) */
} SubShare;

typedef struct NetFusePlan {
  int n_chains;
  FusedChain *chains;  /* [n_chains] */
  int n_subs;
  SubShare *subs;      /* [n_subs] */
  int *sub_of;         /* [n_layers] the SubShare a layer reads, -1 none */
  int *chain_of;       /* [n_layers] index of the chain a layer belongs to, -1 none */
  bool *split_share;   /* [n_layers] Split layers whose tops share the bottom's data */
  int *split_into;     /* [n_layers] the chain whose backward does Split i's, -1 none */
  Backend backend;     /* the backend the plan was made for */
  /* The last layer the current forward runs (net_forward_to's `end`;
   * n_layers-1 otherwise): a chain whose fwd_at lies beyond it runs
   * unfused, so its first layers still leave their values. */
  int forward_end;
} NetFusePlan;

/* Build (or rebuild) net->fuse for the net's backend: NULL plan when fusion
 * does not apply (reference backend, MOKA_FUSE=0, CUDA before
 * MOKA_FUSE_CUDA_READY, no chain found). 0, or -1 with moka_errorf. Logs one
 * line with the number of chains unless `quiet`. */
int net_fuse_plan(Net *net, bool quiet);
void net_fuse_free(Net *net);

/* How net_forward_layer / net_backward_layer treat layer i right now. */
typedef enum FuseRole {
  FUSE_NONE = 0,   /* not fused: run the layer itself */
  FUSE_RUN = 1,    /* run chain *chain here (forward or backward) */
  FUSE_SKIP = 2    /* a member of a fused chain that runs elsewhere: do nothing */
} FuseRole;
FuseRole net_fuse_forward_role(Net *net, int i, FusedChain **chain);
FuseRole net_fuse_backward_role(Net *net, int i, FusedChain **chain);

/* Before Split layer i's forward (fast CPU backend): point its tops' data at
 * its bottom's (blob_share_data) when the plan allows it, so that the Split
 * copies nothing (Caffe's ShareData); nothing for other layers. */
void net_fuse_split_share(Net *net, int i);

/* May Split layer i's tops share its bottom's data: no layer writes a top in place (it
 * would change its siblings' values too). Also used by the CUDA memory plan
 * (src/net_cuda.c), where training nets' Splits share device data. */
bool net_fuse_split_may_share(const Net *net, int i);

/* The plan's SubShare groups (src/net_fuse_sub.c; fast CPU, after the
 * Split sharing is planned): 0, or -1 with moka_errorf (memory). */
int net_fuse_plan_subs(Net *net, NetFusePlan *p);

/* Around layer i's forward (forward true) or backward on the fast CPU
 * backend: when i reads a SubShare, make the copy (the forward of its first
 * member) and point the layer at it (ConvPriv.sub_x), then (leave) unset
 * it. enter: 0, or -1 with moka_errorf (memory). */
int net_fuse_sub_enter(Net *net, int i, bool forward);
void net_fuse_sub_leave(Net *net, int i);

/* The fast CPU backend's chain forward / backward (src/net_fuse.c). */
int net_fuse_cpu_forward(Net *net, const FusedChain *c);
int net_fuse_cpu_backward(Net *net, const FusedChain *c);
/* The two on bf16 channels-last blobs (MOKA_BF16_ACT=1; src/net_fuse_bf16.c), which the
 * two above hand such a chain to. */
int net_fuse_cpu_forward_bf16(Net *net, const FusedChain *c);
int net_fuse_cpu_backward_bf16(Net *net, const FusedChain *c);

#ifdef MOKA_WITH_CUDA
/* The CUDA backend's chain forward / backward (src/net_fuse_cuda.c, helper
 * B): the same math on blobs' dev_data/dev_diff, on net->cuda's stream. */
int net_fuse_cuda_forward(Net *net, const FusedChain *c);
int net_fuse_cuda_backward(Net *net, const FusedChain *c);
#endif

#endif
