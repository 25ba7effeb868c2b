/*
 * Adversarial calls on every function of the C ABI: NULL for each pointer,
 * zero and huge sizes, overflowing strides and dimensions, images that
 * declare huge sizes in a tiny file, truncated and foreign checkpoints, bags
 * of 0, 1 and 100,000 cells, and callbacks that cancel, fail or misbehave.
 * Each call must return its documented status; none may crash. Built with
 * -fsanitize=address by tests/adversarial.rs (and run under valgrind there).
 *
 * usage: adversarial ENCODER MIL SCRATCH_DIR [quick]
 *   quick: skips the 100,000-cell bags and the training entry points (for
 *   valgrind, which runs libtorch some fifty times slower).
 */
#include <amlmil.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned calls, failures;

/* Checks one status; prints the call, both statuses and the message. */
static void expect_at(const char* what, amlmil_status got, amlmil_status want, int line) {
  calls++;
  if (got != want) {
    failures++;
    fprintf(stderr, "line %d: %s returned %s, expected %s: %s\n", line, what,
            amlmil_status_name(got), amlmil_status_name(want), amlmil_last_error());
  } else if (want != AMLMIL_STATUS_OK && amlmil_last_error()[0] == '\0') {
    failures++;
    fprintf(stderr, "line %d: %s failed without a message\n", line, what);
  }
}
#define EXPECT(call, want) expect_at(#call, (call), (want), __LINE__)

/* Checks a condition on a value-returning call (counted as one call). */
static void check_at(const char* what, int ok, int line) {
  calls++;
  if (!ok) {
    failures++;
    fprintf(stderr, "line %d: %s does not hold\n", line, what);
  }
}
#define CHECK(cond) check_at(#cond, (cond), __LINE__)

static const amlmil_status OK = AMLMIL_STATUS_OK, NUL = AMLMIL_STATUS_NULL_ARGUMENT,
                           INVAL = AMLMIL_STATUS_INVALID_ARGUMENT,
                           SMALL = AMLMIL_STATUS_BUFFER_TOO_SMALL;

/* ---- crafted files ---------------------------------------------------- */

static uint32_t crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

static size_t put_be32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
  return 4;
}

/* A PNG of 57 bytes declaring `w` × `h` RGB pixels, with an IEND but no IDAT. */
static size_t png_declaring(uint8_t* out, uint32_t w, uint32_t h) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  size_t n = 0;
  memcpy(out, sig, 8);
  n += 8;
  n += put_be32(out + n, 13);
  uint8_t* chunk = out + n;
  memcpy(out + n, "IHDR", 4);
  n += 4;
  n += put_be32(out + n, w);
  n += put_be32(out + n, h);
  out[n++] = 8; /* bit depth */
  out[n++] = 2; /* RGB */
  out[n++] = 0;
  out[n++] = 0;
  out[n++] = 0;
  n += put_be32(out + n, crc32(chunk, 17));
  n += put_be32(out + n, 0);
  memcpy(out + n, "IEND", 4);
  n += 4;
  n += put_be32(out + n, crc32(out + n - 4, 4));
  return n;
}

static size_t put_le16(uint8_t* p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  return 2;
}
static size_t put_le32(uint8_t* p, uint32_t v) {
  put_le16(p, (uint16_t)v);
  put_le16(p + 2, (uint16_t)(v >> 16));
  return 4;
}
static size_t ifd_entry(uint8_t* p, uint16_t tag, uint16_t type, uint32_t count, uint32_t value) {
  size_t n = put_le16(p, tag);
  n += put_le16(p + n, type);
  n += put_le32(p + n, count);
  n += put_le32(p + n, value);
  return n;
}

/* A little-endian TIFF of ~100 bytes declaring `w` × `h` 8-bit RGB pixels
 * in one uncompressed strip of 4 bytes. */
static size_t tiff_declaring(uint8_t* out, uint32_t w, uint32_t h) {
  size_t n = 0;
  out[n++] = 'I';
  out[n++] = 'I';
  n += put_le16(out + n, 42);
  n += put_le32(out + n, 8);
  n += put_le16(out + n, 8); /* entries */
  n += ifd_entry(out + n, 256, 4, 1, w);   /* ImageWidth */
  n += ifd_entry(out + n, 257, 4, 1, h);   /* ImageLength */
  n += ifd_entry(out + n, 258, 3, 1, 8);   /* BitsPerSample */
  n += ifd_entry(out + n, 259, 3, 1, 1);   /* no compression */
  n += ifd_entry(out + n, 262, 3, 1, 2);   /* RGB */
  n += ifd_entry(out + n, 273, 4, 1, 120); /* StripOffsets */
  n += ifd_entry(out + n, 277, 3, 1, 3);   /* SamplesPerPixel */
  n += ifd_entry(out + n, 279, 4, 1, 4);   /* StripByteCounts */
  n += put_le32(out + n, 0);
  while (n < 124) out[n++] = 0x7f;
  return n;
}

static int write_file(const char* path, const void* data, size_t len) {
  FILE* f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(data, 1, len, f);
  return fclose(f) == 0 && w == len ? 0 : -1;
}

/* The first `keep` bytes of `src` written to `dst`. */
static int truncated_copy(const char* src, const char* dst, long keep) {
  FILE* f = fopen(src, "rb");
  if (!f) return -1;
  char* buf = malloc((size_t)keep);
  size_t got = fread(buf, 1, (size_t)keep, f);
  fclose(f);
  int rc = write_file(dst, buf, got);
  free(buf);
  return rc;
}

/* ---- callbacks --------------------------------------------------------- */

static int32_t cancel_at_once(void* user_data, const amlmil_progress* p) {
  (void)p;
  (*(int*)user_data)++;
  return 1;
}

static int32_t cancel_on_second(void* user_data, const amlmil_progress* p) {
  (void)p;
  return ++*(int*)user_data >= 2 ? -1 : 0;
}

static int32_t count_progress(void* user_data, const amlmil_progress* p) {
  if (p == NULL || p->stage == NULL || p->done > p->total) return 1; /* break the contract check */
  (*(int*)user_data)++;
  return 0;
}

static int32_t preprocess_fails(void* user_data, amlmil_cell* cells, size_t n) {
  (void)user_data;
  (void)cells;
  (void)n;
  return 7;
}

static int32_t preprocess_drops_all(void* user_data, amlmil_cell* cells, size_t n) {
  (void)user_data;
  for (size_t i = 0; i < n; i++) cells[i].keep = 0;
  return 0;
}

/* Scribbles over every pixel and sets `keep` to odd non-zero values. */
static int32_t preprocess_scribbles(void* user_data, amlmil_cell* cells, size_t n) {
  (void)user_data;
  for (size_t i = 0; i < n; i++) {
    memset(cells[i].pixels, 0xA5, (size_t)cells[i].width * cells[i].height * 3);
    cells[i].keep = 0xFFFFFFFFu;
  }
  return 0;
}

static unsigned log_records;
static void count_log(void* user_data, uint32_t level, const char* target, const char* message) {
  (void)user_data;
  (void)level;
  if (target && message) log_records++;
}

/* ---- helpers ------------------------------------------------------------ */

static uint8_t cell_pixels[16 * 16 * 4];

static amlmil_bag* bag_of(size_t n, uint32_t side) {
  amlmil_bag* bag = NULL;
  if (amlmil_bag_new(&bag) != OK) return NULL;
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < (size_t)side * side * 3; k++)
      cell_pixels[k] = (uint8_t)(k * 7 + i * 13);
    if (amlmil_bag_add_pixels(bag, i, cell_pixels, (size_t)side * side * 3, side, side, side * 3,
                              AMLMIL_PIXEL_FORMAT_RGB8) != OK) {
      amlmil_bag_free(bag);
      return NULL;
    }
  }
  return bag;
}

static amlmil_session_options cpu_options(void) {
  amlmil_session_options o;
  memset(&o, 0, sizeof o);
  amlmil_session_options_init(&o);
  o.device = "cpu";
  o.warm_up = 0;
  o.batch_size = 8;
  return o;
}

static char scratch_path[4096];
static const char* in_scratch(const char* scratch, const char* name) {
  snprintf(scratch_path, sizeof scratch_path, "%s/%s", scratch, name);
  return scratch_path;
}

/* ---- the suites --------------------------------------------------------- */

static void globals(void) {
  CHECK(amlmil_version() != NULL && amlmil_version()[0] != '\0');
  CHECK(amlmil_abi_version() == AMLMIL_ABI_VERSION);
  CHECK(amlmil_cuda_device_count() < 1024);
  EXPECT(amlmil_runtime_info(NULL), NUL);
  char* json = NULL;
  EXPECT(amlmil_runtime_info(&json), OK);
  amlmil_string_free(json);
  amlmil_string_free(NULL);
  CHECK(strcmp(amlmil_status_name(0), "AMLMIL_STATUS_OK") == 0);
  CHECK(strcmp(amlmil_status_name(UINT32_MAX), "AMLMIL_STATUS_UNKNOWN") == 0);
  CHECK(amlmil_last_error() != NULL);
  EXPECT(amlmil_set_log_callback(count_log, NULL, UINT32_MAX), OK);
  EXPECT(amlmil_set_log_callback(NULL, NULL, 0), OK);
  CHECK(amlmil_training_cancel() == 0);
}

static void options(void) {
  amlmil_session_options o;
  EXPECT((amlmil_session_options_init)(NULL), NUL); /* the plain symbol, not the macro */
  EXPECT(amlmil_session_options_init_sized(NULL, sizeof o), NUL);
  EXPECT(amlmil_session_options_init_sized(&o, 0), INVAL);
  EXPECT(amlmil_session_options_init_sized(&o, 1), INVAL);
  /* A caller from the future: a struct twice ours; the tail stays untouched. */
  unsigned char big[2 * sizeof(amlmil_session_options)];
  memset(big, 0xEE, sizeof big);
  EXPECT(amlmil_session_options_init_sized((amlmil_session_options*)(void*)big, sizeof big), OK);
  CHECK(big[sizeof big - 1] == 0xEE && ((amlmil_session_options*)(void*)big)->struct_size ==
                                           sizeof(amlmil_session_options));
  EXPECT(amlmil_session_options_init_sized(&o, SIZE_MAX), OK);
}

static void bags(const char* scratch) {
  amlmil_bag* bag = NULL;
  size_t len = 99;
  EXPECT(amlmil_bag_new(NULL), NUL);
  EXPECT(amlmil_bag_new(&bag), OK);
  amlmil_bag_free(NULL);
  EXPECT(amlmil_bag_len(NULL, &len), NUL);
  EXPECT(amlmil_bag_len(bag, NULL), NUL);
  EXPECT(amlmil_bag_clear(NULL), NUL);

  const uint32_t RGB = AMLMIL_PIXEL_FORMAT_RGB8;
  uint8_t px[64 * 64 * 4];
  memset(px, 100, sizeof px);
  EXPECT(amlmil_bag_add_pixels(NULL, 1, px, 12, 2, 2, 6, RGB), NUL);
  EXPECT(amlmil_bag_add_pixels(bag, 1, NULL, 12, 2, 2, 6, RGB), NUL);
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 0, 2, 2, 6, RGB), INVAL);
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 11, 2, 2, 6, RGB), INVAL);        /* one byte short */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 0, 2, 6, RGB), INVAL);        /* zero width */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 0, 6, RGB), INVAL);        /* zero height */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 2, 5, RGB), INVAL);        /* stride < row */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 2, 6, 99), INVAL);         /* format */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 2, SIZE_MAX, RGB), INVAL); /* stride × h overflows */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 2, SIZE_MAX / 2 + 1, RGB), INVAL);
  /* w × h × channels beyond size_t on 32 bits, beyond any cell on 64. */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, SIZE_MAX, UINT32_MAX, UINT32_MAX, SIZE_MAX, RGB),
         INVAL);
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, sizeof px, 65536, 1, 65536 * 3, RGB), INVAL);
  EXPECT(amlmil_bag_len(bag, &len), OK);
  CHECK(len == 0); /* nothing half-added */
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 2, 6, RGB), OK);
  EXPECT(amlmil_bag_add_pixels(bag, 1, px, 12, 2, 2, 6, RGB), INVAL); /* duplicate id */
  EXPECT(amlmil_bag_add_pixels(bag, UINT64_MAX, px, 16, 2, 2, 8, AMLMIL_PIXEL_FORMAT_BGRA8), OK);

  /* Encoded bytes: NULL, empty, garbage, truncated, huge declared sizes. */
  EXPECT(amlmil_bag_add_encoded(NULL, 5, px, 10), NUL);
  EXPECT(amlmil_bag_add_encoded(bag, 5, NULL, 10), NUL);
  EXPECT(amlmil_bag_add_encoded(bag, 5, px, 0), INVAL);
  EXPECT(amlmil_bag_add_encoded(bag, 5, px, sizeof px), AMLMIL_STATUS_DECODE);
  uint8_t file[256];
  size_t n = png_declaring(file, 1u << 30, 1u << 30);
  EXPECT(amlmil_bag_add_encoded(bag, 5, file, n), AMLMIL_STATUS_DECODE);
  n = png_declaring(file, 4096, 4096); /* within the side limit, but no pixel data */
  EXPECT(amlmil_bag_add_encoded(bag, 5, file, n), AMLMIL_STATUS_DECODE);
  EXPECT(amlmil_bag_add_encoded(bag, 5, file, 20), AMLMIL_STATUS_DECODE); /* truncated header */
  n = tiff_declaring(file, 60000, 60000);
  EXPECT(amlmil_bag_add_encoded(bag, 5, file, n), AMLMIL_STATUS_DECODE);
  n = tiff_declaring(file, 4000, 4000); /* 48 MB declared, 4 bytes present */
  EXPECT(amlmil_bag_add_encoded(bag, 5, file, n), AMLMIL_STATUS_DECODE);
  n = tiff_declaring(file, 0, 7);
  EXPECT(amlmil_bag_add_encoded(bag, 5, file, n), AMLMIL_STATUS_DECODE);

  /* Files: NULL, missing, a directory, invalid UTF-8, a bomb on disk. */
  EXPECT(amlmil_bag_add_file(NULL, 6, "x.png"), NUL);
  EXPECT(amlmil_bag_add_file(bag, 6, NULL), NUL);
  EXPECT(amlmil_bag_add_file(bag, 6, in_scratch(scratch, "missing.png")), AMLMIL_STATUS_IO);
  EXPECT(amlmil_bag_add_file(bag, 6, scratch), AMLMIL_STATUS_IO);
  EXPECT(amlmil_bag_add_file(bag, 6, "\xff\xfe.png"), INVAL);
  n = tiff_declaring(file, 60000, 60000);
  CHECK(write_file(in_scratch(scratch, "bomb.tif"), file, n) == 0);
  EXPECT(amlmil_bag_add_file(bag, 6, in_scratch(scratch, "bomb.tif")), AMLMIL_STATUS_DECODE);
  CHECK(write_file(in_scratch(scratch, "empty.png"), file, 0) == 0);
  EXPECT(amlmil_bag_add_file(bag, 6, in_scratch(scratch, "empty.png")), AMLMIL_STATUS_DECODE);
  EXPECT(amlmil_bag_len(bag, &len), OK);
  CHECK(len == 2);
  EXPECT(amlmil_bag_stream(NULL, NULL), NUL);
  EXPECT(amlmil_bag_clear(bag), OK);
  EXPECT(amlmil_bag_len(bag, &len), OK);
  CHECK(len == 0);
  amlmil_bag_free(bag);
}

static void sessions(const char* enc, const char* mil, const char* scratch) {
  amlmil_session* s = (amlmil_session*)(uintptr_t)1; /* must stay untouched on failure */
  amlmil_session_options o = cpu_options();
  EXPECT(amlmil_session_new(NULL, mil, &o, &s), NUL);
  EXPECT(amlmil_session_new(enc, NULL, &o, &s), NUL);
  EXPECT(amlmil_session_new(enc, mil, &o, NULL), NUL);
  EXPECT(amlmil_session_new(in_scratch(scratch, "none.safetensors"), mil, &o, &s),
         AMLMIL_STATUS_IO);
  EXPECT(amlmil_session_new("\xc3\x28", mil, &o, &s), INVAL);
  EXPECT(amlmil_session_new(mil, mil, &o, &s), AMLMIL_STATUS_CHECKPOINT); /* wrong kind */
  EXPECT(amlmil_session_new(enc, enc, &o, &s), AMLMIL_STATUS_CHECKPOINT);
  CHECK(write_file(in_scratch(scratch, "garbage.safetensors"), "\xff\xff\xff\xff\xff\xff\xff\x7f{",
                   9) == 0);
  EXPECT(amlmil_session_new(in_scratch(scratch, "garbage.safetensors"), mil, &o, &s),
         AMLMIL_STATUS_CHECKPOINT);
  CHECK(truncated_copy(enc, in_scratch(scratch, "truncated.safetensors"), 4000) == 0);
  EXPECT(amlmil_session_new(in_scratch(scratch, "truncated.safetensors"), mil, &o, &s),
         AMLMIL_STATUS_CHECKPOINT);
  CHECK(write_file(in_scratch(scratch, "zero.safetensors"), "", 0) == 0);
  EXPECT(amlmil_session_new(in_scratch(scratch, "zero.safetensors"), mil, &o, &s),
         AMLMIL_STATUS_CHECKPOINT);

  amlmil_session_options bad = o;
  bad.struct_size = 0;
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), INVAL);
  bad = o;
  bad.precision = 77;
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), INVAL);
  bad = o;
  bad.batch_size = 0;
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), INVAL);
  bad = o;
  bad.device = "cuda:99";
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), AMLMIL_STATUS_DEVICE);
  bad = o;
  bad.device = "tpu";
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), AMLMIL_STATUS_DEVICE);
  bad = o;
  bad.batch_size = UINT32_MAX; /* 2.7 PB of activations: refused, not allocated */
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), AMLMIL_STATUS_LIMIT);
  bad = o;
  bad.batch_size = 64;
  bad.max_batch_bytes = 1 << 20;
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), AMLMIL_STATUS_LIMIT);
  bad = o;
  bad.max_cells_per_bag = 0;
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), INVAL);
  bad = o;
  bad.plugin_path = in_scratch(scratch, "no-such-plugin.so");
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), AMLMIL_STATUS_PLUGIN);
  bad.plugin_path = enc; /* not a shared library */
  EXPECT(amlmil_session_new(enc, mil, &bad, &s), AMLMIL_STATUS_PLUGIN);
  CHECK(s == (amlmil_session*)(uintptr_t)1);

  /* Session-less calls on NULL. */
  amlmil_session_cancel(NULL);
  amlmil_session_free(NULL);
  CHECK(amlmil_session_feature_dim(NULL) == 0);
  CHECK(amlmil_session_feature_map_len(NULL) == 0);
  CHECK(amlmil_session_class_name(NULL, 0) == NULL);
  char* json = NULL;
  EXPECT(amlmil_session_info(NULL, &json), NUL);
  amlmil_model_info info;
  EXPECT(amlmil_session_model_info(NULL, &info, sizeof info), NUL);
}

static void classify(const char* enc, const char* mil, int quick) {
  amlmil_session* s = NULL;
  amlmil_session_options o = cpu_options();
  EXPECT(amlmil_session_new(enc, mil, &o, &s), OK);
  if (s == NULL) return;
  char* json = NULL;
  EXPECT(amlmil_session_info(s, NULL), NUL);
  EXPECT(amlmil_session_info(s, &json), OK);
  amlmil_string_free(json);
  amlmil_model_info info;
  EXPECT(amlmil_session_model_info(s, NULL, sizeof info), NUL);
  EXPECT(amlmil_session_model_info(s, &info, 0), INVAL);
  EXPECT(amlmil_session_model_info(s, &info, 3), INVAL);
  EXPECT(amlmil_session_model_info(s, &info, SIZE_MAX), OK);
  EXPECT(amlmil_session_model_info(s, &info, sizeof info), OK);
  CHECK(amlmil_session_class_name(s, info.num_classes) == NULL);
  CHECK(amlmil_session_class_name(s, SIZE_MAX) == NULL);
  const size_t fd = amlmil_session_feature_dim(s), fm = amlmil_session_feature_map_len(s);
  CHECK(fd == 512 && fm > 0);

  amlmil_result* r = (amlmil_result*)(uintptr_t)1;
  amlmil_bag* empty = bag_of(0, 4);
  amlmil_bag* one = bag_of(1, 16);
  amlmil_bag* five = bag_of(5, 9);
  EXPECT(amlmil_session_classify(NULL, one, NULL, NULL, &r), NUL);
  EXPECT(amlmil_session_classify(s, NULL, NULL, NULL, &r), NUL);
  EXPECT(amlmil_session_classify(s, one, NULL, NULL, NULL), NUL);
  EXPECT(amlmil_session_classify(s, empty, NULL, NULL, &r), AMLMIL_STATUS_EMPTY_BAG);
  int n = 0;
  EXPECT(amlmil_session_classify(s, five, cancel_at_once, &n, &r), AMLMIL_STATUS_CANCELLED);
  CHECK(n == 1);
  n = 0;
  EXPECT(amlmil_session_classify(s, five, cancel_on_second, &n, &r), AMLMIL_STATUS_CANCELLED);
  CHECK(r == (amlmil_result*)(uintptr_t)1);

  float emb[5 * 512];
  EXPECT(amlmil_session_embed(NULL, one, NULL, NULL, emb, 512), NUL);
  EXPECT(amlmil_session_embed(s, NULL, NULL, NULL, emb, 512), NUL);
  EXPECT(amlmil_session_embed(s, one, NULL, NULL, NULL, 512), NUL);
  EXPECT(amlmil_session_embed(s, one, NULL, NULL, emb, 0), SMALL);
  EXPECT(amlmil_session_embed(s, one, NULL, NULL, emb, 511), SMALL);
  EXPECT(amlmil_session_embed(s, empty, NULL, NULL, emb, 512), AMLMIL_STATUS_EMPTY_BAG);
  EXPECT(amlmil_session_embed(s, one, NULL, NULL, emb, SIZE_MAX), OK); /* writes 512 only */
  EXPECT(amlmil_session_embed(s, five, cancel_at_once, &n, emb, 5 * 512), AMLMIL_STATUS_CANCELLED);

  float* maps = malloc(5 * fm * sizeof *maps);
  EXPECT(amlmil_session_feature_maps(s, five, NULL, NULL, maps, 5 * fm - 1), SMALL);
  EXPECT(amlmil_session_feature_maps(s, empty, NULL, NULL, maps, 5 * fm), AMLMIL_STATUS_EMPTY_BAG);
  n = 0;
  EXPECT(amlmil_session_feature_maps(s, five, count_progress, &n, maps, 5 * fm), OK);
  CHECK(n >= 1);

  /* classify_features: lengths that lie, overflow, NaN, duplicate ids. */
  uint64_t ids[5] = {1, 2, 3, 4, 5};
  EXPECT(amlmil_session_classify_features(NULL, maps, 5 * fm, 5, ids, &r), NUL);
  EXPECT(amlmil_session_classify_features(s, NULL, 5 * fm, 5, ids, &r), NUL);
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm, 5, ids, NULL), NUL);
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm, 0, ids, &r), AMLMIL_STATUS_EMPTY_BAG);
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm - 1, 5, ids, &r), INVAL);
  EXPECT(amlmil_session_classify_features(s, maps, 0, 5, ids, &r), INVAL);
  EXPECT(amlmil_session_classify_features(s, maps, SIZE_MAX, SIZE_MAX / 2, ids, &r),
         AMLMIL_STATUS_LIMIT);
  EXPECT(amlmil_session_classify_features(s, maps, SIZE_MAX, 40000, ids, &r), INVAL);
  ids[4] = 1;
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm, 5, ids, &r), INVAL);
  ids[4] = 5;
  maps[3] = NAN;
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm, 5, ids, &r), AMLMIL_STATUS_NON_FINITE);
  maps[3] = INFINITY;
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm, 5, ids, &r), AMLMIL_STATUS_NON_FINITE);
  maps[3] = 0.5f;
  EXPECT(amlmil_session_classify_features(s, maps, 5 * fm, 5, NULL, &r), OK);
  amlmil_result_free(r);
  free(maps);

  /* A result, and every result accessor with bad arguments. */
  r = NULL;
  EXPECT(amlmil_session_classify(s, five, NULL, NULL, &r), OK);
  const size_t C = amlmil_result_num_classes(r), N = amlmil_result_num_cells(r);
  CHECK(C == info.num_classes && N == 5);
  CHECK(amlmil_result_num_classes(NULL) == 0 && amlmil_result_num_cells(NULL) == 0);
  CHECK(amlmil_result_class_name(NULL, 0) == NULL);
  CHECK(amlmil_result_class_name(r, C) == NULL && amlmil_result_class_name(r, SIZE_MAX) == NULL);
  size_t cls = 99;
  EXPECT(amlmil_result_predicted_class(NULL, &cls), NUL);
  EXPECT(amlmil_result_predicted_class(r, NULL), NUL);
  EXPECT(amlmil_result_predicted_class(r, &cls), OK);
  CHECK(cls < C);
  float v[64];
  EXPECT(amlmil_result_probabilities(NULL, v, 64), NUL);
  EXPECT(amlmil_result_probabilities(r, NULL, 64), NUL);
  EXPECT(amlmil_result_probabilities(r, v, 0), SMALL);
  EXPECT(amlmil_result_probabilities(r, v, C - 1), SMALL);
  EXPECT(amlmil_result_probabilities(r, v, SIZE_MAX), OK);
  EXPECT(amlmil_result_logits(NULL, v, 64), NUL);
  EXPECT(amlmil_result_logits(r, NULL, 64), NUL);
  EXPECT(amlmil_result_logits(r, v, C - 1), SMALL);
  EXPECT(amlmil_result_logits(r, v, C), OK);
  uint64_t cid[8];
  EXPECT(amlmil_result_cell_ids(NULL, cid, 8), NUL);
  EXPECT(amlmil_result_cell_ids(r, NULL, 8), NUL);
  EXPECT(amlmil_result_cell_ids(r, cid, 4), SMALL);
  EXPECT(amlmil_result_cell_ids(r, cid, 8), OK);
  EXPECT(amlmil_result_attention(NULL, 0, 0, v, 64), NUL);
  EXPECT(amlmil_result_attention(r, 0, 0, NULL, 64), NUL);
  EXPECT(amlmil_result_attention(r, C, 0, v, 64), INVAL);
  EXPECT(amlmil_result_attention(r, SIZE_MAX, 0, v, 64), INVAL);
  EXPECT(amlmil_result_attention(r, 0, 9, v, 64), INVAL);
  EXPECT(amlmil_result_attention(r, 0, 0, v, 4), SMALL);
  EXPECT(amlmil_result_attention(r, 0, AMLMIL_ATTENTION_KIND_RAW, v, 5), OK);
  amlmil_ranked_cell top[8];
  size_t written = 99;
  EXPECT(amlmil_result_top_cells(NULL, 0, 3, top, 8, &written), NUL);
  EXPECT(amlmil_result_top_cells(r, 0, 3, NULL, 8, &written), NUL);
  EXPECT(amlmil_result_top_cells(r, 0, 3, top, 8, NULL), NUL);
  EXPECT(amlmil_result_top_cells(r, C, 3, top, 8, &written), INVAL);
  EXPECT(amlmil_result_top_cells(r, 0, 3, top, 2, &written), SMALL);
  EXPECT(amlmil_result_top_cells(r, 0, SIZE_MAX, top, 8, &written), OK);
  CHECK(written == 5);
  EXPECT(amlmil_result_top_cells(r, 0, 0, top, 8, &written), OK);
  CHECK(written == 0);
  EXPECT(amlmil_result_to_json(NULL, &json), NUL);
  EXPECT(amlmil_result_to_json(r, NULL), NUL);
  EXPECT(amlmil_result_to_json(r, &json), OK);
  amlmil_string_free(json);
  amlmil_result_free(r);
  amlmil_result_free(NULL);

  /* Streaming bags: not twice, not with cells, not past the cell cap. */
  amlmil_bag* stream = NULL;
  EXPECT(amlmil_bag_new(&stream), OK);
  EXPECT(amlmil_bag_stream(stream, NULL), NUL);
  EXPECT(amlmil_bag_stream(five, s), INVAL);
  EXPECT(amlmil_bag_stream(stream, s), OK);
  EXPECT(amlmil_bag_stream(stream, s), INVAL);
  EXPECT(amlmil_session_embed(s, stream, NULL, NULL, emb, 512), INVAL);
  amlmil_bag_free(stream);

  amlmil_session* capped = NULL;
  amlmil_session_options oc = cpu_options();
  oc.max_cells_per_bag = 3;
  EXPECT(amlmil_session_new(enc, mil, &oc, &capped), OK);
  EXPECT(amlmil_session_classify(capped, five, NULL, NULL, &r), AMLMIL_STATUS_LIMIT);
  EXPECT(amlmil_session_embed(capped, five, NULL, NULL, emb, 5 * 512), AMLMIL_STATUS_LIMIT);
  EXPECT(amlmil_bag_new(&stream), OK);
  EXPECT(amlmil_bag_stream(stream, capped), OK);
  for (uint64_t i = 0; i < 3; i++)
    EXPECT(amlmil_bag_add_pixels(stream, i, cell_pixels, 48, 4, 4, 12, AMLMIL_PIXEL_FORMAT_RGB8),
           OK);
  EXPECT(amlmil_bag_add_pixels(stream, 3, cell_pixels, 48, 4, 4, 12, AMLMIL_PIXEL_FORMAT_RGB8),
         AMLMIL_STATUS_LIMIT);
  EXPECT(amlmil_session_classify(capped, stream, NULL, NULL, &r), OK);
  CHECK(amlmil_result_num_cells(r) == 3);
  amlmil_result_free(r);
  amlmil_bag_free(stream);
  amlmil_session_free(capped);

  /* Preprocessing callbacks that fail, drop everything, or scribble. */
  amlmil_session_options op = cpu_options();
  amlmil_session* pre = NULL;
  op.preprocess = preprocess_fails;
  EXPECT(amlmil_session_new(enc, mil, &op, &pre), OK);
  EXPECT(amlmil_session_classify(pre, five, NULL, NULL, &r), AMLMIL_STATUS_PLUGIN);
  amlmil_session_free(pre);
  op.preprocess = preprocess_drops_all;
  EXPECT(amlmil_session_new(enc, mil, &op, &pre), OK);
  EXPECT(amlmil_session_classify(pre, five, NULL, NULL, &r), AMLMIL_STATUS_EMPTY_BAG);
  EXPECT(amlmil_session_embed(pre, five, NULL, NULL, emb, 5 * 512), AMLMIL_STATUS_EMPTY_BAG);
  EXPECT(amlmil_bag_new(&stream), OK);
  EXPECT(amlmil_bag_stream(stream, pre), AMLMIL_STATUS_UNSUPPORTED);
  amlmil_bag_free(stream);
  amlmil_session_free(pre);
  op.preprocess = preprocess_scribbles;
  EXPECT(amlmil_session_new(enc, mil, &op, &pre), OK);
  EXPECT(amlmil_session_classify(pre, five, NULL, NULL, &r), OK);
  CHECK(amlmil_result_num_cells(r) == 5);
  amlmil_result_free(r);
  amlmil_session_free(pre);

  /* Log records from a classification reach the callback. */
  log_records = 0;
  EXPECT(amlmil_set_log_callback(count_log, NULL, AMLMIL_LOG_LEVEL_TRACE), OK);
  amlmil_session* logged = NULL;
  EXPECT(amlmil_session_new(enc, mil, &o, &logged), OK);
  amlmil_session_free(logged);
  EXPECT(amlmil_set_log_callback(NULL, NULL, 0), OK);
  CHECK(log_records > 0);

  /* Bags of 100,000 cells: refused at the default cap before any work;
   * their features classified whole under a raised cap. */
  if (!quick) {
    amlmil_bag* huge = bag_of(100000, 2);
    CHECK(huge != NULL);
    EXPECT(amlmil_session_classify(s, huge, NULL, NULL, &r), AMLMIL_STATUS_LIMIT);
    EXPECT(amlmil_session_feature_maps(s, huge, NULL, NULL, emb, SIZE_MAX), AMLMIL_STATUS_LIMIT);
    amlmil_bag_free(huge);
    amlmil_session* wide = NULL;
    amlmil_session_options ow = cpu_options();
    ow.max_cells_per_bag = 100000;
    EXPECT(amlmil_session_new(enc, mil, &ow, &wide), OK);
    const size_t cells = 100000;
    float* many = calloc(cells * fm, sizeof *many);
    CHECK(many != NULL);
    if (many) {
      for (size_t i = 0; i < cells * fm; i += 97) many[i] = (float)(i % 13) * 0.1f;
      r = NULL;
      EXPECT(amlmil_session_classify_features(wide, many, cells * fm, cells, NULL, &r), OK);
      CHECK(amlmil_result_num_cells(r) == cells);
      amlmil_result_free(r);
      EXPECT(amlmil_session_classify_features(wide, many, cells * fm - 1, cells, NULL, &r), INVAL);
      EXPECT(amlmil_session_classify_features(wide, many, cells * fm, cells + 1, NULL, &r),
             AMLMIL_STATUS_LIMIT);
      free(many);
    }
    amlmil_session_free(wide);
  }

  amlmil_bag_free(empty);
  amlmil_bag_free(one);
  amlmil_bag_free(five);
  amlmil_session_free(s);
}

static void training(const char* scratch) {
  char* out = (char*)(uintptr_t)1;
  const char* cfgs[] = {"", "{", "[]", "null", "{\"dataset\": 5}", "{\"unknown_key\": true}"};
  for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
    EXPECT(amlmil_pretrain(cfgs[i], NULL, NULL, &out), INVAL);
    EXPECT(amlmil_cross_validate(cfgs[i], NULL, NULL, &out), INVAL);
    EXPECT(amlmil_train_mil(cfgs[i], 0, NULL, NULL, &out), INVAL);
    EXPECT(amlmil_experiment(cfgs[i], NULL, NULL, &out), INVAL);
    EXPECT(amlmil_synth_cohort(cfgs[i], in_scratch(scratch, "c"), NULL, NULL, &out), INVAL);
  }
  EXPECT(amlmil_pretrain(NULL, NULL, NULL, &out), NUL);
  EXPECT(amlmil_pretrain("{}", NULL, NULL, NULL), NUL);
  EXPECT(amlmil_cross_validate(NULL, NULL, NULL, &out), NUL);
  EXPECT(amlmil_cross_validate("{}", NULL, NULL, NULL), NUL);
  EXPECT(amlmil_train_mil(NULL, 0, NULL, NULL, &out), NUL);
  EXPECT(amlmil_train_mil("{}", 0, NULL, NULL, NULL), NUL);
  EXPECT(amlmil_experiment(NULL, NULL, NULL, &out), NUL);
  EXPECT(amlmil_experiment("{}", NULL, NULL, NULL), NUL);
  EXPECT(amlmil_synth_cohort("{}", NULL, NULL, NULL, &out), NUL);
  EXPECT(amlmil_synth_cohort("{}", scratch, NULL, NULL, NULL), NUL);
  EXPECT(amlmil_synth_cohort("{\"patients_per_class\": 1e30}", in_scratch(scratch, "c"), NULL,
                             NULL, &out),
         INVAL);
  EXPECT(amlmil_dataset_check(NULL, 0, 0, &out), NUL);
  EXPECT(amlmil_dataset_check(scratch, 0, 0, NULL), NUL);
  EXPECT(amlmil_dataset_check(in_scratch(scratch, "no-such-dir"), 0, 0, &out),
         AMLMIL_STATUS_DATASET);
  EXPECT(amlmil_dataset_check(scratch, 0, 1, &out), AMLMIL_STATUS_DATASET);
  EXPECT(amlmil_extract_features(NULL, "e", "o", 0, "cpu", NULL, NULL, &out), NUL);
  EXPECT(amlmil_extract_features(scratch, NULL, "o", 0, "cpu", NULL, NULL, &out), NUL);
  EXPECT(amlmil_extract_features(scratch, "e", NULL, 0, "cpu", NULL, NULL, &out), NUL);
  /* device NULL means "auto" */
  EXPECT(amlmil_extract_features(scratch, "e", "o", 0, NULL, NULL, NULL, &out),
         AMLMIL_STATUS_DATASET);
  EXPECT(amlmil_extract_features(scratch, "e", "o", 0, "cpu", NULL, NULL, NULL), NUL);
  EXPECT(amlmil_extract_features(scratch, "e", "o", 0, "cpu", NULL, NULL, &out),
         AMLMIL_STATUS_DATASET);
  EXPECT(amlmil_import(NULL, "o", "{}", &out), NUL);
  EXPECT(amlmil_import(scratch, NULL, "{}", &out), NUL);
  EXPECT(amlmil_import(in_scratch(scratch, "garbage.safetensors"), in_scratch(scratch, "o"),
                       "{", &out),
         INVAL);
  CHECK(out == (char*)(uintptr_t)1);
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s ENCODER MIL SCRATCH_DIR [quick]\n", argv[0]);
    return 2;
  }
  const int quick = argc > 4 && strcmp(argv[4], "quick") == 0;
  globals();
  options();
  bags(argv[3]);
  sessions(argv[1], argv[2], argv[3]);
  classify(argv[1], argv[2], quick);
  if (!quick) training(argv[3]);
  printf("adversarial: %u calls checked, %u failed\n", calls, failures);
  return failures == 0 ? 0 : 1;
}
