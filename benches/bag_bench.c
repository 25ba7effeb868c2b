/*
 * bag_bench.c — end-to-end bag latency of libamlmil through its C ABI, as a
 * scanner's software sees it (benches/run.sh builds and runs it).
 *
 *   bag_bench ENCODER MIL CELLS.bin MODE N THREADS BATCH REPEATS [PACE_CELLS_PER_S [PRECISION [DEVICE]]]
 *
 * CELLS.bin: a uint32 count, then per cell a uint32 TIFF length and the TIFF
 * bytes, then the same cells as 144x144 RGB pixels (count * 144*144*3 bytes).
 * N cells are added (cycling through the file's cells, ids 0..N-1), then the
 * bag is classified. MODE: tiff | pixels (plain bag: add encoded bytes or raw
 * pixels, then classify) or stream-tiff | stream-pixels (amlmil_bag_stream:
 * cells encoded while they are added; with PACE, cells arrive at that rate, as
 * from a scanner still segmenting). The bag is built and classified REPEATS
 * times on one session; prints one JSON line with the median and minimum add,
 * classify and total seconds and the process's peak resident memory.
 * PRECISION: fp32 (default), bf16 or fp16 (CUDA). DEVICE: cpu (default), cuda, cuda:N.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "amlmil.h"

#define SIDE 144

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void sleep_until(double t) {
  double d = t - now();
  if (d > 0) {
    struct timespec s = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
    nanosleep(&s, NULL);
  }
}

static void die(const char *what, amlmil_status st) {
  fprintf(stderr, "%s: %s: %s\n", what, amlmil_status_name(st), amlmil_last_error());
  exit(1);
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, size_t n) {
  qsort(v, n, sizeof *v, by_value);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
  if (argc < 9) {
    fprintf(stderr, "usage: %s ENCODER MIL CELLS.bin MODE N THREADS BATCH REPEATS [PACE [PRECISION [DEVICE]]]\n", argv[0]);
    return 2;
  }
  const char *mode = argv[4];
  size_t n = strtoul(argv[5], NULL, 10);
  size_t repeats = strtoul(argv[8], NULL, 10);
  double pace = argc > 9 ? atof(argv[9]) : 0.0;
  const char *precision = argc > 10 ? argv[10] : "fp32";
  const char *device = argc > 11 ? argv[11] : "cpu";
  int stream = strncmp(mode, "stream-", 7) == 0;
  int pixels = strcmp(mode + (stream ? 7 : 0), "pixels") == 0;
  if (repeats == 0) repeats = 1;
  FILE *f = fopen(argv[3], "rb");
  if (f == NULL) {
    perror(argv[3]);
    return 1;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *data = malloc((size_t)size);
  if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) return 1;
  fclose(f);
  uint32_t count;
  memcpy(&count, data, 4);
  const uint8_t **tiff = malloc(count * sizeof *tiff);
  uint32_t *tiff_len = malloc(count * sizeof *tiff_len);
  size_t off = 4;
  for (uint32_t i = 0; i < count; i++) {
    memcpy(&tiff_len[i], data + off, 4);
    tiff[i] = data + off + 4;
    off += 4 + tiff_len[i];
  }
  const uint8_t *rgb = data + off;

  amlmil_session_options o;
  amlmil_session_options_init(&o);
  o.device = device;
  o.num_threads = (uint32_t)atoi(argv[6]);
  o.batch_size = (uint32_t)atoi(argv[7]);
  o.precision = strcmp(precision, "bf16") == 0   ? AMLMIL_PRECISION_BF16
                : strcmp(precision, "fp16") == 0 ? AMLMIL_PRECISION_FP16
                                                 : AMLMIL_PRECISION_FP32;
  amlmil_session *s = NULL;
  amlmil_bag *bag = NULL;
  amlmil_result *r = NULL;
  amlmil_status st;
  double t0 = now();
  if ((st = amlmil_session_new(argv[1], argv[2], &o, &s)) != AMLMIL_STATUS_OK) die("session", st);
  double t_session = now() - t0;
  double *add_s = malloc(repeats * sizeof(double)), *classify_s = malloc(repeats * sizeof(double));
  double *total_s = malloc(repeats * sizeof(double));
  size_t predicted = 0;
  for (size_t rep = 0; rep < repeats; rep++) {
    if ((st = amlmil_bag_new(&bag)) != AMLMIL_STATUS_OK) die("bag", st);
    if (stream && (st = amlmil_bag_stream(bag, s)) != AMLMIL_STATUS_OK) die("stream", st);
    double start = now();
    for (size_t i = 0; i < n; i++) {
      size_t c = i % count;
      if (pace > 0) sleep_until(start + (double)i / pace);
      if (pixels)
        st = amlmil_bag_add_pixels(bag, i, rgb + c * SIDE * SIDE * 3, SIDE * SIDE * 3, SIDE, SIDE,
                                   SIDE * 3, AMLMIL_PIXEL_FORMAT_RGB8);
      else
        st = amlmil_bag_add_encoded(bag, i, tiff[c], tiff_len[c]);
      if (st != AMLMIL_STATUS_OK) die("add", st);
    }
    double t_added = now();
    if ((st = amlmil_session_classify(s, bag, NULL, NULL, &r)) != AMLMIL_STATUS_OK) die("classify", st);
    double t_done = now();
    amlmil_result_predicted_class(r, &predicted);
    amlmil_result_free(r);
    amlmil_bag_free(bag);
    add_s[rep] = t_added - start;
    classify_s[rep] = t_done - t_added;
    total_s[rep] = t_done - start;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double min_total = total_s[0];
  for (size_t i = 1; i < repeats; i++)
    if (total_s[i] < min_total) min_total = total_s[i];
  printf("{\"impl\": \"amlmil_c_abi\", \"device\": \"%s\", \"precision\": \"%s\", \"mode\": \"%s\", \"cells\": %zu, \"threads\": %s, \"batch\": %s, "
         "\"repeats\": %zu, \"pace_cells_per_s\": %.1f, \"session_s\": %.3f, \"add_s\": %.3f, "
         "\"classify_s\": %.3f, \"total_s\": %.3f, \"min_total_s\": %.3f, \"peak_rss_mb\": %.1f, "
         "\"predicted\": %zu}\n",
         device, precision, mode, n, argv[6], argv[7], repeats, pace, t_session, median(add_s, repeats),
         median(classify_s, repeats), median(total_s, repeats), min_total,
         (double)ru.ru_maxrss / 1024.0, predicted);
  free(add_s);
  free(classify_s);
  free(total_s);
  amlmil_session_free(s);
  free(tiff);
  free(tiff_len);
  free(data);
  return 0;
}
