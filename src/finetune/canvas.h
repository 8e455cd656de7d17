/* canvas.h — a tiny RGB rasterizer for the report's PNG charts: filled
 * rectangles, thick lines, a built-in 5x7 bitmap font (ASCII, scalable by
 * whole factors, horizontal or rotated for a y-axis title), PNG output
 * through libpng (image.h). No anti-aliasing: charts are drawn at a size
 * where it is not needed. */
#ifndef MOKA_FT_CANVAS_H
#define MOKA_FT_CANVAS_H

#include <stddef.h>
#include <stdint.h>

typedef struct Canvas {
  int w, h;
  uint8_t *px; /* (H,W,3) RGB */
} Canvas;

/* Colours are 0xRRGGBB. */
int canvas_init(Canvas *c, int w, int h, uint32_t background);
void canvas_free(Canvas *c);
void canvas_pixel(Canvas *c, int x, int y, uint32_t color);
/* Filled rectangle [x, x+w) x [y, y+h), clipped. */
void canvas_rect(Canvas *c, int x, int y, int w, int h, uint32_t color);
/* Rectangle outline, 1 pixel. */
void canvas_frame(Canvas *c, int x, int y, int w, int h, uint32_t color);
/* Line from (x0,y0) to (x1,y1), `thick` pixels wide. */
void canvas_line(Canvas *c, double x0, double y0, double x1, double y1, uint32_t color, int thick);

/* Text in the 5x7 font: each glyph is 6*scale wide (one column of space)
 * and 7*scale high; (x, y) is the top-left corner. Characters outside
 * printable ASCII draw as '?'. Returns the width drawn. */
int canvas_text(Canvas *c, int x, int y, const char *text, uint32_t color, int scale);
int canvas_text_width(const char *text, int scale);
/* Text rotated 90 degrees counter-clockwise (reads bottom to top); (x, y)
 * is the bottom-left corner. */
void canvas_text_up(Canvas *c, int x, int y, const char *text, uint32_t color, int scale);

/* PNG bytes (malloc'd) / a PNG file (written atomically). */
int canvas_png(const Canvas *c, uint8_t **buf, size_t *len);
int canvas_write_png(const Canvas *c, const char *path);

#endif
