/*
 * preprocess_callback.c — a vendor preprocessing step as a C callback.
 *
 *   preprocess_callback ENCODER.safetensors MIL.safetensors IMAGE...
 *
 * Before the encoder sees them, every batch of cells goes through
 * `normalise_and_filter`: each cell's colour channels are scaled to equal
 * means (grey-world stain normalisation) and cells without contrast (blank or
 * out-of-focus crops) are dropped. Prints what the callback did, the
 * predicted subtype and the cells that remain in the result.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>

#include "amlmil.h"

/* Counters shared by every call: sessions may call the callback from several
 * threads at once, so they are atomic. */
typedef struct {
  atomic_uint batches, cells, dropped;
} stats;

static double luminance_sd(const uint8_t *px, size_t n) {
  double sum = 0, sq = 0;
  size_t i;
  for (i = 0; i < n; i++) {
    double l = 0.299 * px[3 * i] + 0.587 * px[3 * i + 1] + 0.114 * px[3 * i + 2];
    sum += l;
    sq += l * l;
  }
  return sqrt(fmax(sq / (double)n - (sum / (double)n) * (sum / (double)n), 0.0));
}

static int32_t normalise_and_filter(void *user_data, amlmil_cell *cells, size_t num_cells) {
  stats *s = user_data;
  size_t c, i, k;
  atomic_fetch_add(&s->batches, 1u);
  for (c = 0; c < num_cells; c++) {
    amlmil_cell *cell = &cells[c];
    size_t n = (size_t)cell->width * cell->height;
    double mean[3] = {0, 0, 0}, grey;
    atomic_fetch_add(&s->cells, 1u);
    if (luminance_sd(cell->pixels, n) < 2.0) {
      cell->keep = 0;
      atomic_fetch_add(&s->dropped, 1u);
      continue;
    }
    for (i = 0; i < n; i++)
      for (k = 0; k < 3; k++) mean[k] += cell->pixels[3 * i + k];
    grey = (mean[0] + mean[1] + mean[2]) / 3.0;
    for (i = 0; i < n; i++)
      for (k = 0; k < 3; k++) {
        double v = mean[k] > 0 ? cell->pixels[3 * i + k] * grey / mean[k] : cell->pixels[3 * i + k];
        cell->pixels[3 * i + k] = (uint8_t)fmin(255.0, v + 0.5);
      }
  }
  return 0; /* non-zero fails the classification with AMLMIL_STATUS_PLUGIN */
}

int main(int argc, char **argv) {
  amlmil_session_options options;
  amlmil_session *session = NULL;
  amlmil_bag *bag = NULL;
  amlmil_result *result = NULL;
  stats s;
  amlmil_status st;
  size_t predicted = 0;
  int i, rc = 1;

  if (argc < 4) {
    fprintf(stderr, "usage: %s ENCODER MIL IMAGE...\n", argv[0]);
    return 2;
  }
  atomic_init(&s.batches, 0u);
  atomic_init(&s.cells, 0u);
  atomic_init(&s.dropped, 0u);
  st = amlmil_session_options_init(&options);
  options.device = "cpu";
  options.preprocess = normalise_and_filter;
  options.preprocess_user_data = &s;
  if (st == AMLMIL_STATUS_OK) st = amlmil_session_new(argv[1], argv[2], &options, &session);
  if (st == AMLMIL_STATUS_OK) st = amlmil_bag_new(&bag);
  for (i = 3; i < argc && st == AMLMIL_STATUS_OK; i++)
    st = amlmil_bag_add_file(bag, (uint64_t)(i - 3), argv[i]);
  if (st == AMLMIL_STATUS_OK) st = amlmil_session_classify(session, bag, NULL, NULL, &result);
  if (st == AMLMIL_STATUS_OK) st = amlmil_result_predicted_class(result, &predicted);
  if (st == AMLMIL_STATUS_OK) {
    uint64_t ids[64];
    size_t n = amlmil_result_num_cells(result), j;
    printf("callback: %u cells in %u batches, %u dropped\n", atomic_load(&s.cells),
           atomic_load(&s.batches), atomic_load(&s.dropped));
    printf("predicted: %s\n", amlmil_result_class_name(result, predicted));
    if (n <= 64 && amlmil_result_cell_ids(result, ids, 64) == AMLMIL_STATUS_OK) {
      printf("cells classified:");
      for (j = 0; j < n; j++) printf(" %s", argv[3 + ids[j]]);
      printf("\n");
    }
    rc = 0;
  } else {
    fprintf(stderr, "%s: %s\n", amlmil_status_name(st), amlmil_last_error());
  }
  amlmil_result_free(result);
  amlmil_bag_free(bag);
  amlmil_session_free(session);
  return rc;
}
