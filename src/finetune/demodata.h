/* demodata.h — the demo's image dataset, generated (no download): DIR/pretrain
 * holds 6 classes of shapes (circle, cross, ring, square, stripes, triangle)
 * and DIR/finetune 4 other shapes (crescent, diamond, hexagon, star), each a
 * folder of size x size JPEGs: a random colour on a random gradient with
 * noise, at a random position, size and rotation. `make demo` pretrains on
 * the first label set and fine-tunes on the second through a renamed
 * classifier. Deterministic for a given seed. */
#ifndef MOKA_FT_DEMODATA_H
#define MOKA_FT_DEMODATA_H

#include <stdint.h>

#define FT_DEMO_PRETRAIN_CLASSES 6
#define FT_DEMO_FINETUNE_CLASSES 4
extern const char *const ft_demo_pretrain_classes[FT_DEMO_PRETRAIN_CLASSES];
extern const char *const ft_demo_finetune_classes[FT_DEMO_FINETUNE_CLASSES];

int ft_demo_generate(const char *dir, int size, int per_class_pretrain, int per_class_finetune,
                     uint32_t seed);

#endif
