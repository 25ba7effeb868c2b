/*
 * classify_bag.c — classify one patient's bag of single-cell images with libamlmil.
 *
 *   cc -std=c11 -Iinclude examples/c/classify_bag.c -Ltarget/debug -lamlmil \
 *      -Wl,-rpath,$PWD/target/debug -o classify_bag
 *   ./classify_bag ENCODER.safetensors MIL.safetensors BAG_DIR [DEVICE] [TOP_K]
 *
 * BAG_DIR holds the cell images (TIFF, PNG, JPEG) of one patient. Prints the
 * predicted subtype, the class probabilities and the cells with the highest
 * attention for the predicted class, for a cytologist to review.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amlmil.h"

#define CHECK(call)                                                                   \
  do {                                                                                \
    amlmil_status st_ = (call);                                                       \
    if (st_ != AMLMIL_STATUS_OK) {                                                    \
      fprintf(stderr, "%s failed: %s: %s\n", #call, amlmil_status_name(st_),          \
              amlmil_last_error());                                                   \
      goto fail;                                                                      \
    }                                                                                 \
  } while (0)

static int is_image(const char *name) {
  const char *dot = strrchr(name, '.');
  if (dot == NULL || name[0] == '.') return 0;
  return strcmp(dot, ".tif") == 0 || strcmp(dot, ".tiff") == 0 || strcmp(dot, ".png") == 0 ||
         strcmp(dot, ".jpg") == 0 || strcmp(dot, ".jpeg") == 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int32_t on_progress(void *user_data, const amlmil_progress *p) {
  (void)user_data;
  fprintf(stderr, "\r%s: %llu/%llu cells", p->stage, (unsigned long long)p->done,
          (unsigned long long)p->total);
  if (p->done == p->total) fprintf(stderr, "\n");
  return 0; /* non-zero would cancel */
}

int main(int argc, char **argv) {
  int rc = 1;
  amlmil_session *session = NULL;
  amlmil_bag *bag = NULL;
  amlmil_result *result = NULL;
  char **names = NULL;
  size_t n_names = 0, cap = 0, i;
  float *probs = NULL;
  amlmil_ranked_cell *top = NULL;
  DIR *dir = NULL;
  struct dirent *entry;
  amlmil_session_options options;
  size_t n_classes, predicted, k, written;

  if (argc < 4) {
    fprintf(stderr, "usage: %s ENCODER MIL BAG_DIR [DEVICE] [TOP_K]\n", argv[0]);
    return 2;
  }
  if (amlmil_abi_version() != AMLMIL_ABI_VERSION) {
    fprintf(stderr, "libamlmil ABI %u, header ABI %u\n", amlmil_abi_version(), AMLMIL_ABI_VERSION);
    return 1;
  }
  printf("libamlmil %s (header %s)\n", amlmil_version(), AMLMIL_VERSION);

  CHECK(amlmil_session_options_init(&options));
  options.device = argc > 4 ? argv[4] : "auto";
  CHECK(amlmil_session_new(argv[1], argv[2], &options, &session));

  dir = opendir(argv[3]);
  if (dir == NULL) {
    perror(argv[3]);
    goto fail;
  }
  while ((entry = readdir(dir)) != NULL) {
    if (!is_image(entry->d_name)) continue;
    if (n_names == cap) {
      char **grown;
      cap = cap ? cap * 2 : 64;
      grown = realloc(names, cap * sizeof *names);
      if (grown == NULL) goto fail;
      names = grown;
    }
    names[n_names] = malloc(strlen(argv[3]) + strlen(entry->d_name) + 2);
    if (names[n_names] == NULL) goto fail;
    sprintf(names[n_names], "%s/%s", argv[3], entry->d_name);
    n_names++;
  }
  qsort(names, n_names, sizeof *names, by_name);

  CHECK(amlmil_bag_new(&bag));
  for (i = 0; i < n_names; i++) CHECK(amlmil_bag_add_file(bag, (uint64_t)i, names[i]));
  printf("bag %s: %zu cells\n", argv[3], n_names);

  CHECK(amlmil_session_classify(session, bag, on_progress, NULL, &result));

  n_classes = amlmil_result_num_classes(result);
  probs = malloc(n_classes * sizeof *probs);
  if (probs == NULL) goto fail;
  CHECK(amlmil_result_probabilities(result, probs, n_classes));
  CHECK(amlmil_result_predicted_class(result, &predicted));
  printf("predicted: %s\n", amlmil_result_class_name(result, predicted));
  for (i = 0; i < n_classes; i++)
    printf("  %-14s %.4f\n", amlmil_result_class_name(result, i), probs[i]);

  k = argc > 5 ? (size_t)strtoul(argv[5], NULL, 10) : 5;
  top = malloc((k ? k : 1) * sizeof *top);
  if (top == NULL) goto fail;
  CHECK(amlmil_result_top_cells(result, predicted, k, top, k, &written));
  printf("top %zu cells for %s:\n", written, amlmil_result_class_name(result, predicted));
  for (i = 0; i < written; i++)
    printf("  #%zu %s attention %.4f\n", i + 1, names[top[i].cell_id], top[i].attention);
  rc = 0;

fail:
  if (dir) closedir(dir);
  for (i = 0; i < n_names; i++) free(names[i]);
  free(names);
  free(probs);
  free(top);
  amlmil_result_free(result);
  amlmil_bag_free(bag);
  amlmil_session_free(session);
  return rc;
}
