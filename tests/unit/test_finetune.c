/* test_finetune.c — the pieces of `moka finetune`: reading a dataset and its
 * bad forms, the stratified split, the generated Caffe files (parsed back and
 * checked field by field, the deploy net built), the solver's schedule, the
 * training record files, the rasterizer/charts/base64 of the report, the
 * progress line, the demo images. The whole workflow runs in
 * tests/cli/test_finetune.sh. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "caffe.pb-c.h"
#include "finetune/canvas.h"
#include "finetune/chart.h"
#include "finetune/dataset.h"
#include "finetune/demodata.h"
#include "finetune/history.h"
#include "finetune/netgen.h"
#include "finetune/report.h"
#include "finetune/strbuf.h"
#include "finetune/trainer.h"
#include "image.h"
#include "net.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

static char g_tmp[256];

static void touch(const char *rel) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
  /* mkdir -p the parents */
  for (char *q = p + strlen(g_tmp) + 1; *q; q++)
    if (*q == '/') {
      *q = 0;
      mkdir(p, 0777);
      *q = '/';
    }
  FILE *f = fopen(p, "wb");
  if (f) {
    fputs("x", f);
    fclose(f);
  }
}

static const char *tmp_path(const char *rel) {
  static char bufs[4][512];
  static int k;
  char *b = bufs[k++ % 4];
  snprintf(b, 512, "%s/%s", g_tmp, rel);
  return b;
}

static void write_text(const char *rel, const char *text) {
  touch(rel);
  moka_write_file_atomic(tmp_path(rel), text, strlen(text));
}

/* ---- dataset ------------------------------------------------------------------------ */

static void test_folder_dataset(void) {
  /* classes in sorted order, images recursively, other files ignored */
  touch("ds1/dog/b.jpg");
  touch("ds1/dog/a.PNG");
  touch("ds1/dog/sub/c.jpeg");
  touch("ds1/cat/1.jpg");
  touch("ds1/cat/notes.txt");
  touch("ds1/cat/.hidden.jpg");
  touch("ds1/ant/x.jpg");
  FtDataset d;
  REQUIRE(ft_dataset_read(tmp_path("ds1"), NULL, NULL, &d) == 0);
  REQUIRE(d.n_classes == 3);
  CHECK(!strcmp(d.classes[0], "ant") && !strcmp(d.classes[1], "cat") && !strcmp(d.classes[2], "dog"));
  REQUIRE(d.n == 5);
  CHECK(!strcmp(d.items[0].path, "ant/x.jpg") && d.items[0].label == 0);
  CHECK(!strcmp(d.items[1].path, "cat/1.jpg") && d.items[1].label == 1);
  CHECK(!strcmp(d.items[2].path, "dog/a.PNG") && d.items[2].label == 2);
  CHECK(!strcmp(d.items[3].path, "dog/b.jpg"));
  CHECK(!strcmp(d.items[4].path, "dog/sub/c.jpeg"));
  CHECK(d.n_ignored == 1);
  int counts[3];
  ft_dataset_class_counts(&d, counts);
  CHECK(counts[0] == 1 && counts[1] == 1 && counts[2] == 3);
  ft_dataset_free(&d);
  /* a labels file fixes the order */
  write_text("labels_dca.txt", "dog\ncat\nant\n");
  REQUIRE(ft_dataset_read(tmp_path("ds1"), NULL, tmp_path("labels_dca.txt"), &d) == 0);
  CHECK(!strcmp(d.classes[0], "dog") && d.items[0].label == 0 && !strcmp(d.items[0].path, "dog/a.PNG"));
  ft_dataset_free(&d);
}

static void test_bad_datasets(void) {
  FtDataset d;
  /* no images at all */
  mkdir(tmp_path("empty"), 0777);
  CHECK(ft_dataset_read(tmp_path("empty"), NULL, NULL, &d) == -1);
  CHECK(strstr(moka_error(), "no images found") != NULL);
  /* images but no class folders */
  touch("loose/a.jpg");
  touch("loose/b.jpg");
  CHECK(ft_dataset_read(tmp_path("loose"), NULL, NULL, &d) == -1);
  CHECK(strstr(moka_error(), "no class subfolders") != NULL);
  /* a single class */
  touch("single/cat/a.jpg");
  touch("single/cat/b.jpg");
  CHECK(ft_dataset_read(tmp_path("single"), NULL, NULL, &d) == -1);
  CHECK_MSG(strstr(moka_error(), "only one class ('cat')") != NULL, "%s", moka_error());
  /* an empty class folder */
  touch("emptyclass/cat/a.jpg");
  mkdir(tmp_path("emptyclass/dog"), 0777);
  CHECK(ft_dataset_read(tmp_path("emptyclass"), NULL, NULL, &d) == -1);
  CHECK_MSG(strstr(moka_error(), "emptyclass/dog' holds no images") != NULL, "%s", moka_error());
  /* labels that do not match the folders */
  write_text("labels_bad.txt", "ant\ncat\nbird\n");
  CHECK(ft_dataset_read(tmp_path("ds1"), NULL, tmp_path("labels_bad.txt"), &d) == -1);
  CHECK_MSG(strstr(moka_error(), "names class 'bird'") != NULL, "%s", moka_error());
  write_text("labels_short.txt", "ant\ncat\n");
  CHECK(ft_dataset_read(tmp_path("ds1"), NULL, tmp_path("labels_short.txt"), &d) == -1);
  CHECK_MSG(strstr(moka_error(), "subfolder 'dog'") != NULL, "%s", moka_error());
  /* list files: a label beyond the labels file, a label with no image, a malformed line */
  write_text("list1.txt", "a.jpg 0\nb.jpg 2\n");
  CHECK(ft_dataset_read(tmp_path("list1.txt"), NULL, tmp_path("labels_short.txt"), &d) == -1);
  CHECK_MSG(strstr(moka_error(), "uses label 2") != NULL, "%s", moka_error());
  CHECK(ft_dataset_read(tmp_path("list1.txt"), NULL, NULL, &d) == -1);
  CHECK_MSG(strstr(moka_error(), "no image with label 1") != NULL, "%s", moka_error());
  write_text("list2.txt", "a.jpg 0\nb.jpg\n");
  CHECK(ft_dataset_read(tmp_path("list2.txt"), NULL, NULL, &d) == -1);
  CHECK_MSG(strstr(moka_error(), "list2.txt:2") != NULL, "%s", moka_error());
  CHECK(ft_dataset_read(tmp_path("does_not_exist"), NULL, NULL, &d) == -1);
  /* a good list: root = its folder, names = numbers */
  write_text("list3.txt", "x/a.jpg 1\nx/b c.jpg 0\n");
  REQUIRE(ft_dataset_read(tmp_path("list3.txt"), NULL, NULL, &d) == 0);
  CHECK(d.n_classes == 2 && !strcmp(d.classes[1], "1") && d.n == 2);
  CHECK(!strcmp(d.items[1].path, "x/b c.jpg") && d.items[1].label == 0);
  CHECK(strstr(d.root, g_tmp) == d.root && d.root[strlen(d.root) - 1] == '/');
  ft_dataset_free(&d);
}

static void test_split(void) {
  /* classes of 1, 2, 10 and 25 images */
  FtDataset d = {0};
  d.n_classes = 4;
  char *names[4] = {"one", "two", "ten", "many"};
  d.classes = names;
  const int sizes[4] = {1, 2, 10, 25};
  d.n = 38;
  d.items = calloc(38, sizeof *d.items);
  char *root = "";
  d.root = root;
  int k = 0;
  for (int c = 0; c < 4; c++)
    for (int i = 0; i < sizes[c]; i++) d.items[k++].label = c;
  FtSplit s;
  moka_set_log_level(2); /* the warning about class 'one' */
  REQUIRE(ft_split(&d, 0.1, 7, &s) == 0);
  int val[4] = {0}, train[4] = {0}, seen[38] = {0};
  for (int i = 0; i < s.n_val; i++) val[d.items[s.val[i]].label]++, seen[s.val[i]]++;
  for (int i = 0; i < s.n_train; i++) train[d.items[s.train[i]].label]++, seen[s.train[i]]++;
  CHECK(val[0] == 0 && train[0] == 1); /* a single image: training only */
  CHECK(val[1] == 1 && train[1] == 1); /* at least one validation image */
  CHECK(val[2] == 1 && train[2] == 9);
  CHECK(val[3] == 3 && train[3] == 22); /* round(2.5) = 3 */
  for (int i = 0; i < 38; i++) CHECK(seen[i] == 1);
  /* validation grouped by class */
  for (int i = 1; i < s.n_val; i++) CHECK(d.items[s.val[i - 1]].label <= d.items[s.val[i]].label);
  /* the training order is shuffled across classes, and seeded */
  int changes = 0;
  for (int i = 1; i < s.n_train; i++) changes += d.items[s.train[i - 1]].label != d.items[s.train[i]].label;
  CHECK(changes > 5);
  FtSplit s2;
  REQUIRE(ft_split(&d, 0.1, 7, &s2) == 0);
  CHECK(s2.n_train == s.n_train && !memcmp(s2.train, s.train, sizeof(int) * (size_t)s.n_train));
  ft_split_free(&s2);
  REQUIRE(ft_split(&d, 0.1, 8, &s2) == 0);
  CHECK(memcmp(s2.train, s.train, sizeof(int) * (size_t)s.n_train) != 0);
  ft_split_free(&s2);
  CHECK(ft_split(&d, 1.5, 7, &s2) == -1);
  ft_split_free(&s);
  /* every class with one image: no validation set */
  d.n = 1;
  d.n_classes = 1;
  CHECK(ft_split(&d, 0.1, 7, &s) == -1);
  CHECK(strstr(moka_error(), "no validation images") != NULL);
  moka_set_log_level(0);
  free(d.items);
}

/* ---- generated Caffe files ------------------------------------------------------------ */

static const char *deploy_path(void) { return "data/ResNet-50-deploy.prototxt"; }

static FtNetSpec spec_default(void) {
  FtNetSpec s = {0};
  s.n_classes = 4;
  s.batch = 16;
  s.val_batch = 8;
  s.resize = 256;
  s.n_train = 400;
  s.n_val = 40;
  s.train_lmdb = "/x/train_lmdb";
  s.val_lmdb = "/x/val_lmdb";
  s.mean_file = "/x/mean.binaryproto";
  s.mirror = true;
  s.bn = FT_BN_FROZEN;
  s.cls_lr_mult = 10;
  s.cls_bias_lr_mult = 20;
  s.command = "moka finetune ...";
  return s;
}

static Caffe__NetParameter *parse_net(const char *text) {
  ProtobufCMessage *m = NULL;
  if (prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), "generated", &m)) {
    fprintf(stderr, "  parse error: %s\n", moka_error());
    return NULL;
  }
  return (Caffe__NetParameter *)m;
}

static const Caffe__LayerParameter *find_layer(const Caffe__NetParameter *np, const char *name, int nth) {
  for (size_t i = 0; i < np->n_layer; i++)
    if (!strcmp(np->layer[i]->name, name) && nth-- == 0) return np->layer[i];
  return NULL;
}

static int count_type(const Caffe__NetParameter *np, const char *type) {
  int n = 0;
  for (size_t i = 0; i < np->n_layer; i++) n += !strcmp(np->layer[i]->type, type);
  return n;
}

static void test_train_val(void) {
  FtNetSpec s = spec_default();
  char *tv, *dp;
  FtNetInfo info;
  REQUIRE(ft_net_write(deploy_path(), &s, &tv, &dp, &info) == 0);
  CHECK(!strcmp(info.classifier_old, "fc1000") && !strcmp(info.classifier_new, "fc4"));
  CHECK(info.old_outputs == 1000 && info.crop == 224 && info.channels == 3);
  CHECK(!strcmp(info.input_blob, "data") && !strcmp(info.logits, "fc4") && !strcmp(info.prob, "prob"));
  CHECK(info.n_bn == 53);
  /* commented: the reasons are in the file */
  CHECK(strstr(tv, "# BatchNorm: use_global_stats: true") != NULL);
  CHECK(strstr(tv, "lr_mult: 10 decay_mult: 1 }  # weights") != NULL);
  CHECK(strstr(tv, "# command: moka finetune ...") != NULL);
  Caffe__NetParameter *np = parse_net(tv);
  REQUIRE(np != NULL);
  CHECK(!strcmp(np->name, "ResNet-50") && np->n_input == 0);
  const Caffe__LayerParameter *d0 = find_layer(np, "data", 0), *d1 = find_layer(np, "data", 1);
  REQUIRE(d0 && d1);
  CHECK(!strcmp(d0->type, "Data") && d0->n_include == 1 && d0->include[0]->phase == CAFFE__PHASE__TRAIN);
  CHECK(d1->n_include == 1 && d1->include[0]->phase == CAFFE__PHASE__TEST);
  CHECK(d0->n_top == 2 && !strcmp(d0->top[1], "label"));
  CHECK(d0->transform_param->mirror && d0->transform_param->crop_size == 224);
  CHECK(!d1->transform_param->mirror && d1->transform_param->crop_size == 224);
  CHECK(!strcmp(d0->transform_param->mean_file, "/x/mean.binaryproto"));
  CHECK(!strcmp(d0->data_param->source, "/x/train_lmdb") && d0->data_param->batch_size == 16);
  CHECK(!strcmp(d1->data_param->source, "/x/val_lmdb") && d1->data_param->batch_size == 8);
  CHECK(d0->data_param->backend == CAFFE__DATA_PARAMETER__DB__LMDB);
  /* every BatchNorm frozen */
  int frozen = 0;
  for (size_t i = 0; i < np->n_layer; i++)
    if (!strcmp(np->layer[i]->type, "BatchNorm"))
      frozen += np->layer[i]->batch_norm_param && np->layer[i]->batch_norm_param->has_use_global_stats &&
                np->layer[i]->batch_norm_param->use_global_stats;
  CHECK(frozen == 53);
  /* the classifier */
  CHECK(find_layer(np, "fc1000", 0) == NULL);
  const Caffe__LayerParameter *fc = find_layer(np, "fc4", 0);
  REQUIRE(fc != NULL);
  CHECK(!strcmp(fc->bottom[0], "pool5") && !strcmp(fc->top[0], "fc4"));
  CHECK(fc->inner_product_param->num_output == 4);
  REQUIRE(fc->n_param == 2);
  CHECK(fc->param[0]->lr_mult == 10 && fc->param[0]->decay_mult == 1);
  CHECK(fc->param[1]->lr_mult == 20 && fc->param[1]->decay_mult == 0);
  CHECK(!strcmp(fc->inner_product_param->weight_filler->type, "gaussian"));
  CHECK(fc->inner_product_param->weight_filler->std == 0.01f);
  CHECK(!strcmp(fc->inner_product_param->bias_filler->type, "constant"));
  /* loss and accuracy instead of the Softmax; no top-5 with 4 classes */
  CHECK(count_type(np, "Softmax") == 0 && count_type(np, "SoftmaxWithLoss") == 1);
  const Caffe__LayerParameter *acc = find_layer(np, "accuracy", 0);
  REQUIRE(acc != NULL);
  CHECK(acc->n_include == 1 && acc->include[0]->phase == CAFFE__PHASE__TEST);
  CHECK(find_layer(np, "accuracy_top5", 0) == NULL);
  /* the rest is the deploy net: 53 convolutions without fillers (fine-tuning) */
  CHECK(count_type(np, "Convolution") == 53 && count_type(np, "Eltwise") == 16);
  const Caffe__LayerParameter *c1 = find_layer(np, "conv1", 0);
  CHECK(c1 && c1->convolution_param->weight_filler == NULL);
  caffe__net_parameter__free_unpacked(np, NULL);

  /* the deploy net: Input, fc4, Softmax; it builds, and gives (1, 4) */
  np = parse_net(dp);
  REQUIRE(np != NULL);
  CHECK(count_type(np, "Input") == 1 && count_type(np, "Softmax") == 1 && count_type(np, "Data") == 0);
  CHECK(find_layer(np, "fc4", 0) && find_layer(np, "fc4", 0)->n_param == 0);
  caffe__net_parameter__free_unpacked(np, NULL);
  free(tv);
  free(dp);
}

static void test_train_val_options(void) {
  /* batch statistics, from scratch, a smaller input, >5 classes, mean values */
  FtNetSpec s = spec_default();
  s.n_classes = 7;
  s.bn = FT_BN_BATCH;
  s.bn_maf = 0.9f;
  s.from_scratch = true;
  s.input_size = 32;
  s.resize = 37;
  s.mean_file = NULL;
  s.n_mean_values = 3;
  s.mean_values[0] = 104, s.mean_values[1] = 117, s.mean_values[2] = 123;
  s.mirror = false;
  s.classifier_name = "my_fc";
  char *tv, *dp;
  FtNetInfo info;
  REQUIRE(ft_net_write(deploy_path(), &s, &tv, &dp, &info) == 0);
  CHECK(!strcmp(info.classifier_new, "my_fc") && info.crop == 32 && !strcmp(info.pool_made_global, "pool5"));
  Caffe__NetParameter *np = parse_net(tv);
  REQUIRE(np != NULL);
  const Caffe__LayerParameter *d0 = find_layer(np, "data", 0);
  REQUIRE(d0);
  CHECK(!d0->transform_param->mirror && d0->transform_param->crop_size == 32);
  CHECK(d0->transform_param->n_mean_value == 3 && d0->transform_param->mean_value[2] == 123);
  int batch = 0;
  for (size_t i = 0; i < np->n_layer; i++)
    if (!strcmp(np->layer[i]->type, "BatchNorm")) {
      const Caffe__BatchNormParameter *bp = np->layer[i]->batch_norm_param;
      batch += bp && !bp->has_use_global_stats && bp->moving_average_fraction == 0.9f;
    }
  CHECK(batch == 53);
  const Caffe__LayerParameter *p5 = find_layer(np, "pool5", 0);
  REQUIRE(p5);
  CHECK(p5->pooling_param->global_pooling && !p5->pooling_param->has_kernel_size);
  const Caffe__LayerParameter *c1 = find_layer(np, "conv1", 0);
  CHECK(c1 && c1->convolution_param->weight_filler &&
        !strcmp(c1->convolution_param->weight_filler->type, "msra"));
  /* zero gamma at the end of the 12 residual branches beside an identity shortcut */
  int zero = 0;
  for (size_t i = 0; i < np->n_layer; i++)
    if (!strcmp(np->layer[i]->type, "Scale") && np->layer[i]->scale_param &&
        np->layer[i]->scale_param->filler)
      zero += np->layer[i]->scale_param->filler->value == 0;
  CHECK(zero == 12);
  const Caffe__LayerParameter *s2c = find_layer(np, "scale2b_branch2c", 0);
  CHECK(s2c && s2c->scale_param->filler);
  CHECK(find_layer(np, "accuracy_top5", 0) && find_layer(np, "accuracy_top5", 0)->accuracy_param->top_k == 5);
  caffe__net_parameter__free_unpacked(np, NULL);
  /* the deploy net at 32x32 builds and outputs 7 probabilities */
  np = parse_net(dp);
  REQUIRE(np != NULL);
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TEST;
  o.quiet = true;
  moka_set_log_level(1);
  Net *net = net_create(np, &o, "deploy");
  moka_set_log_level(0);
  CHECK_MSG(net != NULL, "%s", moka_error());
  if (net) {
    Blob *prob = net_blob(net, "prob");
    CHECK(prob && prob->shape[0] == 1 && prob->count == 7);
    CHECK(net_blob(net, "data")->shape[2] == 32);
    float loss;
    CHECK(net_forward(net, &loss) == 0);
    double sum = 0;
    for (size_t k = 0; k < prob->count; k++) sum += prob->data[k];
    CHECK(fabs(sum - 1) < 1e-5);
    net_free(net);
  }
  caffe__net_parameter__free_unpacked(np, NULL);
  free(tv);
  free(dp);
}

static void test_net_errors(void) {
  FtNetSpec s = spec_default();
  char *tv, *dp;
  FtNetInfo info;
  write_text("noip.prototxt",
             "name: \"x\" input: \"data\" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n"
             "layer { name: \"c\" type: \"Convolution\" bottom: \"data\" top: \"c\" "
             "convolution_param { num_output: 2 kernel_size: 3 } }\n");
  CHECK(ft_net_write(tmp_path("noip.prototxt"), &s, &tv, &dp, &info) == -1);
  CHECK_MSG(strstr(moka_error(), "no InnerProduct") != NULL, "%s", moka_error());
  write_text("after.prototxt",
             "name: \"x\" input: \"data\" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n"
             "layer { name: \"fc\" type: \"InnerProduct\" bottom: \"data\" top: \"fc\" "
             "inner_product_param { num_output: 2 } }\n"
             "layer { name: \"r\" type: \"ReLU\" bottom: \"fc\" top: \"fc\" }\n");
  CHECK(ft_net_write(tmp_path("after.prototxt"), &s, &tv, &dp, &info) == -1);
  CHECK_MSG(strstr(moka_error(), "comes after the classifier") != NULL, "%s", moka_error());
  write_text("rect.prototxt",
             "name: \"x\" input: \"data\" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 6\n"
             "layer { name: \"fc\" type: \"InnerProduct\" bottom: \"data\" top: \"fc\" "
             "inner_product_param { num_output: 2 } }\n");
  CHECK(ft_net_write(tmp_path("rect.prototxt"), &s, &tv, &dp, &info) == -1);
  CHECK_MSG(strstr(moka_error(), "not square") != NULL, "%s", moka_error());
  /* no Softmax in the deploy: one is added; fc -> fc_ft */
  REQUIRE(ft_net_write(tmp_path("after.prototxt"), &s, &tv, &dp, &info) == -1);
  write_text("nosm.prototxt",
             "name: \"x\" input: \"data\" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n"
             "layer { name: \"fc\" type: \"InnerProduct\" bottom: \"data\" top: \"fc\" "
             "inner_product_param { num_output: 2 } }\n");
  REQUIRE(ft_net_write(tmp_path("nosm.prototxt"), &s, &tv, &dp, &info) == 0);
  CHECK(!strcmp(info.classifier_new, "fc_ft"));
  Caffe__NetParameter *np = parse_net(dp);
  CHECK(np && count_type(np, "Softmax") == 1);
  if (np) caffe__net_parameter__free_unpacked(np, NULL);
  free(tv);
  free(dp);
  s.classifier_name = "fc";
  CHECK(ft_net_write(tmp_path("nosm.prototxt"), &s, &tv, &dp, &info) == -1);
  CHECK_MSG(strstr(moka_error(), "must differ") != NULL, "%s", moka_error());
}

static void test_solver_text(void) {
  /* the seed: 365 iterations per epoch, steps at epochs 8, 25, 60, 85 of 90 */
  FtSolverSpec s = {0};
  s.net = "/x/train_val.prototxt";
  s.n_train = 365 * 50;
  s.n_val = 1801;
  s.batch = 50;
  s.val_batch = 50;
  s.epochs = 90;
  s.base_lr = 0.001;
  s.momentum = 0.9;
  s.weight_decay = 1e-4;
  s.gamma = 0.1;
  s.n_steps = 4;
  s.steps[0] = 0.089, s.steps[1] = 0.278, s.steps[2] = 0.667, s.steps[3] = 0.944;
  s.snapshot_prefix = "/x/snapshots/finetune";
  s.seed = 3;
  CHECK(ft_iters_per_epoch(s.n_train, s.batch) == 365);
  CHECK(ft_iters_per_epoch(101, 10) == 11);
  int st[16];
  REQUIRE(ft_stepvalues(&s, st) == 4);
  CHECK(st[0] == 8 * 365 && st[1] == 25 * 365 && st[2] == 60 * 365 && st[3] == 85 * 365);
  char *t = ft_solver_text(&s);
  REQUIRE(t != NULL);
  CHECK(strstr(t, "# drops after epochs 8, 25, 60, 85 of 90") != NULL);
  ProtobufCMessage *m;
  REQUIRE(prototxt_parse(&caffe__solver_parameter__descriptor, t, strlen(t), "solver", &m) == 0);
  Caffe__SolverParameter *p = (Caffe__SolverParameter *)m;
  CHECK(!strcmp(p->net, "/x/train_val.prototxt"));
  CHECK(p->n_test_iter == 1 && p->test_iter[0] == 37 && p->test_interval == 365);
  CHECK(p->max_iter == 90 * 365 && p->snapshot == 365);
  CHECK(!strcmp(p->lr_policy, "multistep") && p->n_stepvalue == 4 && p->stepvalue[3] == 31025);
  CHECK(p->base_lr == 0.001f && p->momentum == 0.9f && p->weight_decay == 1e-4f && p->gamma == 0.1f);
  CHECK(!strcmp(p->type, "SGD") && p->solver_mode == CAFFE__SOLVER_PARAMETER__SOLVER_MODE__CPU);
  CHECK(p->random_seed == 3 && !strcmp(p->snapshot_prefix, "/x/snapshots/finetune"));
  CHECK(p->has_test_initialization && !p->test_initialization);
  protobuf_c_message_free_unpacked(m, NULL);
  free(t);
  /* scaled to 10 epochs; steps that fall together or at the end are dropped */
  s.epochs = 10;
  REQUIRE(ft_stepvalues(&s, st) == 4);
  CHECK(st[0] == 365 && st[1] == 3 * 365 && st[2] == 7 * 365 && st[3] == 9 * 365);
  s.epochs = 2;
  REQUIRE(ft_stepvalues(&s, st) == 1);
  CHECK(st[0] == 365);
  s.gpu = true;
  s.device_id = 1;
  t = ft_solver_text(&s);
  CHECK(t && strstr(t, "solver_mode: GPU\ndevice_id: 1\n"));
  free(t);
}

/* ---- the record of a run --------------------------------------------------------------- */

static void test_history(void) {
  FtHistory h;
  REQUIRE(ft_history_init(&h, 3) == 0);
  for (int i = 0; i < 2500; i++) REQUIRE(ft_history_add_iter(&h, i, 2.0f - i * 1e-4f, (i % 4) / 4.0f) == 0);
  CHECK(ft_history_add_iter(&h, 7, 1, 1) == -1);
  FtEpochStats e = {1, 1000, 1.5, 0.4, 1.2, 0.5, -1, 12.5, 80};
  REQUIRE(ft_history_add_epoch(&h, &e) == 0);
  e.epoch = 2, e.iter = 2000, e.val_acc = 0.75;
  REQUIRE(ft_history_add_epoch(&h, &e) == 0);
  h.best_epoch = 2;
  for (int k = 0; k < 9; k++) h.confusion[k] = k * 3;
  REQUIRE(ft_history_save(&h, g_tmp) == 0);
  FtHistory g;
  REQUIRE(ft_history_init(&g, 3) == 0);
  REQUIRE(ft_history_load(&g, g_tmp) == 0);
  CHECK(g.n_iters == 2500 && fabsf(g.loss[2499] - (2.0f - 2499e-4f)) < 1e-5f && g.acc[3] == 0.75f);
  CHECK(g.n_epochs == 2 && g.best_epoch == 2 && g.epochs[1].val_acc == 0.75 && g.epochs[0].seconds == 12.5);
  CHECK(g.confusion[8] == 24 && g.confusion[1] == 3);
  CHECK(ft_history_best(&g) == &g.epochs[1]);
  /* a resume from iteration 1500 forgets what came after */
  ft_history_truncate(&g, 1500);
  CHECK(g.n_iters == 1500 && g.n_epochs == 1 && g.best_epoch == 0 && ft_history_best(&g) == NULL);
  ft_history_free(&g);
  ft_history_free(&h);
  /* a damaged file is an error naming it */
  write_text("bad/iterations.tsv", "iter\tloss\taccuracy\n0\t1\t0\n5\tx\n");
  REQUIRE(ft_history_init(&g, 3) == 0);
  CHECK(ft_history_load(&g, tmp_path("bad")) == -1);
  CHECK(strstr(moka_error(), "iterations.tsv:3") != NULL);
  ft_history_free(&g);
}

/* ---- report pieces ------------------------------------------------------------------------ */

static void test_strbuf(void) {
  StrBuf b = {0};
  char *t = sb_take(&b); /* empty: still a terminated string */
  CHECK(t && t[0] == 0 && strlen(t) == 0);
  free(t);
  for (int i = 0; i < 1000; i++) sb_printf(&b, "%d,", i);
  sb_indent(&b, "a\n\nb", "  ");
  t = sb_take(&b);
  REQUIRE(t != NULL);
  CHECK(!strncmp(t, "0,1,2,", 6) && strstr(t, "999,  a\n\n  b\n") != NULL);
  free(t);
}

static void test_base64(void) {
  const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) {
    char *b = ft_base64((const uint8_t *)in[i], strlen(in[i]));
    CHECK_MSG(b && !strcmp(b, want[i]), "'%s' -> '%s'", in[i], b ? b : "(null)");
    free(b);
  }
}

static int count_color(const Image *im, int r, int g, int b) {
  int n = 0;
  for (int i = 0; i < im->h * im->w; i++)
    n += im->px[3 * i] == b && im->px[3 * i + 1] == g && im->px[3 * i + 2] == r;
  return n;
}

static void test_canvas(void) {
  Canvas c;
  REQUIRE(canvas_init(&c, 64, 40, 0xffffff) == 0);
  CHECK(canvas_text_width("ab", 1) == 11 && canvas_text_width("ab", 2) == 22 && canvas_text_width("", 3) == 0);
  canvas_text(&c, 2, 2, "H", 0x000000, 1);
  /* 'H': two full columns of 7 and a middle bar of 3 = 17 pixels */
  int ink = 0;
  for (int y = 0; y < 40; y++)
    for (int x = 0; x < 64; x++) ink += c.px[(y * 64 + x) * 3] == 0;
  CHECK(ink == 17);
  CHECK(c.px[(2 * 64 + 2) * 3] == 0 && c.px[(2 * 64 + 3) * 3] == 255); /* top-left of H, then blank */
  canvas_rect(&c, 60, 35, 10, 10, 0xff0000); /* clipped */
  canvas_line(&c, 0, 39, 63, 0, 0x00ff00, 1);
  canvas_line(&c, 0, 0, 1e300, NAN, 0x00ff00, 3); /* ignored, no crash */
  uint8_t *png;
  size_t len;
  REQUIRE(canvas_png(&c, &png, &len) == 0);
  Image im;
  REQUIRE(image_decode(png, len, 3, &im) == 0);
  CHECK(im.w == 64 && im.h == 40);
  CHECK(count_color(&im, 255, 0, 0) == 20);  /* 4 x 5 of the rectangle are inside */
  CHECK(count_color(&im, 0, 255, 0) >= 64); /* the diagonal covers every column */
  CHECK(count_color(&im, 0, 0, 0) == 17);
  image_free(&im);
  free(png);
  canvas_free(&c);
  CHECK(chart_nice_step(1, 5) == 0.2 && chart_nice_step(90, 8) == 20 && chart_nice_step(0.7, 6) == 0.2);
}

static void test_charts(void) {
  double x[50], y[50], v[3] = {1, 0.5, NAN};
  for (int i = 0; i < 50; i++) x[i] = i / 10.0, y[i] = exp(-i / 20.0);
  ChartSeries s[2] = {{"loss", x, y, 50, 0x2166ac, 2, false}, {"val", x, y, 5, 0xd6604d, 2, true}};
  Canvas c;
  REQUIRE(canvas_init(&c, 400, 240, 0xffffff) == 0);
  REQUIRE(chart_lines(&c, "Loss", "epoch", "loss", s, 2, 1, 0) == 0);
  int blue = 0, red = 0;
  for (int i = 0; i < 400 * 240; i++) {
    const uint8_t *p = c.px + 3 * i;
    blue += p[0] == 0x21 && p[1] == 0x66 && p[2] == 0xac;
    red += p[0] == 0xd6 && p[1] == 0x60 && p[2] == 0x4d;
  }
  CHECK(blue > 300 && red > 50);
  canvas_free(&c);
  char *labels[3] = {"cat", "a very long class name indeed", "dog"};
  REQUIRE(canvas_init(&c, 400, 120, 0xffffff) == 0);
  CHECK(chart_bars(&c, "Per-class", labels, v, 3) == 0);
  canvas_free(&c);
  int counts[9] = {5, 1, 0, 0, 6, 0, 2, 0, 4};
  REQUIRE(canvas_init(&c, 300, 300, 0xffffff) == 0);
  CHECK(chart_confusion(&c, "Confusion", labels, counts, 3) == 0);
  canvas_free(&c);
}

static void test_progress(void) {
  char b[256];
  ft_format_duration(b, sizeof b, 42.4);
  CHECK(!strcmp(b, "42s"));
  ft_format_duration(b, sizeof b, 185);
  CHECK(!strcmp(b, "3m05s"));
  ft_format_duration(b, sizeof b, 3720);
  CHECK(!strcmp(b, "1h02m"));
  ft_format_duration(b, sizeof b, 2 * 86400 + 3 * 3600);
  CHECK(!strcmp(b, "2d03h"));
  ft_format_duration(b, sizeof b, -1);
  CHECK(!strcmp(b, "?"));
  FtProgress p = {3, 30, 1020, 10950, 41.83, 0.41321, 0.001, 3725, NULL};
  ft_progress_format(b, sizeof b, &p);
  CHECK_MSG(!strcmp(b, "epoch 3/30  iter 1020/10950  41.8 img/s  loss 0.4132  lr 0.001  ETA 1h02m"), "%s", b);
  p.note = "validating 2/5";
  p.loss = NAN;
  p.img_per_s = 0;
  ft_progress_format(b, sizeof b, &p);
  CHECK_MSG(strstr(b, "-- img/s  loss --") && strstr(b, "  validating 2/5"), "%s", b);
}

static void test_demo_data(void) {
  REQUIRE(ft_demo_generate(tmp_path("demo"), 24, 2, 1, 5) == 0);
  for (int k = 0; k < FT_DEMO_PRETRAIN_CLASSES; k++) {
    char rel[128];
    snprintf(rel, sizeof rel, "demo/pretrain/%s/0001.jpg", ft_demo_pretrain_classes[k]);
    Image im;
    REQUIRE(image_read_file(tmp_path(rel), 3, &im) == 0);
    CHECK(im.w == 24 && im.h == 24);
    image_free(&im);
  }
  FtDataset d;
  REQUIRE(ft_dataset_read(tmp_path("demo/finetune"), NULL, NULL, &d) == 0);
  CHECK(d.n_classes == FT_DEMO_FINETUNE_CLASSES && d.n == FT_DEMO_FINETUNE_CLASSES);
  CHECK(!strcmp(d.classes[3], "star"));
  ft_dataset_free(&d);
  /* deterministic */
  REQUIRE(ft_demo_generate(tmp_path("demo2"), 24, 2, 1, 5) == 0);
  uint8_t *a, *b;
  size_t na, nb;
  REQUIRE(moka_read_file(tmp_path("demo/pretrain/ring/0000.jpg"), &a, &na) == 0);
  REQUIRE(moka_read_file(tmp_path("demo2/pretrain/ring/0000.jpg"), &b, &nb) == 0);
  CHECK(na == nb && !memcmp(a, b, na));
  free(a);
  free(b);
}

int main(void) {
  snprintf(g_tmp, sizeof g_tmp, "/tmp/moka_test_finetune.XXXXXX");
  if (!mkdtemp(g_tmp)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_folder_dataset);
  RUN(test_bad_datasets);
  RUN(test_split);
  RUN(test_train_val);
  RUN(test_train_val_options);
  RUN(test_net_errors);
  RUN(test_solver_text);
  RUN(test_history);
  RUN(test_strbuf);
  RUN(test_base64);
  RUN(test_canvas);
  RUN(test_charts);
  RUN(test_progress);
  RUN(test_demo_data);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
  return test_summary();
}
