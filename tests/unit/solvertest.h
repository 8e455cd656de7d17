/* solvertest.h — what the solver tests test_solver.c and
 * test_solver_golden.c share: a solver from prototxt text, and the tiny net
 * of the update tests. Header-only, like testlib.h: each test_*.c is its own
 * program.
 */
#ifndef MOKA_SOLVERTEST_H
#define MOKA_SOLVERTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prototxt.h"
#include "solver.h"
#include "testlib.h"
#include "util.h"

static inline Caffe__SolverParameter *parse_solver(const char *text) {
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__solver_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  return (Caffe__SolverParameter *)m;
}

static inline Solver *make_solver(const char *text) {
  Caffe__SolverParameter *p = parse_solver(text);
  if (!p) return NULL;
  SolverOptions o = {.quiet_nets = true};
  Solver *s = solver_create(p, &o, "test");
  if (!s) fprintf(stderr, "    %s\n", moka_error());
  caffe__solver_parameter__free_unpacked(p, NULL);
  return s;
}

static inline void replace_string(char **field, const char *v) {
  free(*field);
  *field = strdup(v);
}

/* The tiny net of the update tests: ip weights (2,3) lr 1 decay 1, bias (2)
 * lr 2 decay 0. */
#define TINY_NET                                                                      \
  "train_net_param { name: 'tiny' "                                                   \
  "  layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } } " \
  "  layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' "                  \
  "    param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } "        \
  "    inner_product_param { num_output: 2 } } } "

#endif
