// wrapper_test.cpp — checks amlmil.hpp against the C ABI it wraps.
//
//   wrapper_test ENCODER.safetensors MIL.safetensors BAG_DIR SCRATCH_DIR
//
// Run by tests/cpp.rs. Prints one line per check and "all checks passed";
// exits 1 on the first failed check.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "amlmil.hpp"

namespace fs = std::filesystem;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
  if (!ok) ++failures;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Runs `f`, expects an amlmil::Error with `status` whose message contains `needle`.
template <class F>
void expect_error(F&& f, amlmil::Status status, const std::string& needle, const std::string& what) {
  try {
    f();
    expect(false, what + " (no exception)");
  } catch (const amlmil::Error& e) {
    const bool ok = e.status() == status && contains(e.what(), needle) &&
                    std::string(e.status_name()) == amlmil::status_name(status);
    expect(ok, what + " -> " + e.status_name() + ": " + e.what());
  } catch (const std::exception& e) {
    expect(false, what + " (wrong exception: " + e.what() + ")");
  }
}

std::vector<fs::path> cell_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".tif") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The C API's view of a result, for comparison with the wrapper's.
struct CView {
  std::vector<float> probabilities, logits;
  std::vector<std::uint64_t> ids;
  std::vector<std::vector<float>> attention, raw;
  std::vector<amlmil_ranked_cell> top;
  std::vector<std::string> names;
  std::size_t predicted = 0;
  std::string json;
};

CView c_classify(const amlmil_session* session, const amlmil_bag* bag) {
  CView v;
  amlmil_result* r = nullptr;
  if (amlmil_session_classify(session, bag, nullptr, nullptr, &r) != AMLMIL_STATUS_OK) {
    throw std::runtime_error(std::string("C classify: ") + amlmil_last_error());
  }
  const std::size_t c = amlmil_result_num_classes(r), n = amlmil_result_num_cells(r);
  v.probabilities.resize(c);
  v.logits.resize(c);
  v.ids.resize(n);
  amlmil_result_probabilities(r, v.probabilities.data(), c);
  amlmil_result_logits(r, v.logits.data(), c);
  amlmil_result_cell_ids(r, v.ids.data(), n);
  amlmil_result_predicted_class(r, &v.predicted);
  for (std::size_t k = 0; k < c; ++k) {
    v.names.emplace_back(amlmil_result_class_name(r, k));
    std::vector<float> a(n), raw(n);
    amlmil_result_attention(r, k, AMLMIL_ATTENTION_KIND_SOFTMAX, a.data(), n);
    amlmil_result_attention(r, k, AMLMIL_ATTENTION_KIND_RAW, raw.data(), n);
    v.attention.push_back(a);
    v.raw.push_back(raw);
  }
  v.top.resize(3);
  std::size_t written = 0;
  amlmil_result_top_cells(r, v.predicted, 3, v.top.data(), v.top.size(), &written);
  v.top.resize(written);
  char* json = nullptr;
  amlmil_result_to_json(r, &json);
  v.json = json;
  amlmil_string_free(json);
  amlmil_result_free(r);
  return v;
}

bool same_top(const std::vector<amlmil::RankedCell>& a, const std::vector<amlmil_ranked_cell>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].cell_id != b[i].cell_id || a[i].index != b[i].index || a[i].attention != b[i].attention) return false;
  }
  return true;
}

void check_types() {
  static_assert(!std::is_copy_constructible_v<amlmil::Session>);
  static_assert(!std::is_copy_assignable_v<amlmil::Bag>);
  static_assert(!std::is_copy_constructible_v<amlmil::Result>);
  static_assert(std::is_nothrow_move_constructible_v<amlmil::Session>);
  static_assert(std::is_nothrow_move_assignable_v<amlmil::Session>);
  static_assert(std::is_nothrow_move_constructible_v<amlmil::Bag>);
  static_assert(std::is_nothrow_move_assignable_v<amlmil::Bag>);
  static_assert(std::is_nothrow_move_constructible_v<amlmil::Result>);
  static_assert(std::is_nothrow_move_assignable_v<amlmil::Result>);
  static_assert(std::is_nothrow_destructible_v<amlmil::Session>);
  static_assert(std::is_base_of_v<std::runtime_error, amlmil::Error>);
  static_assert(std::is_convertible_v<std::vector<std::uint8_t>&, amlmil::span<const std::uint8_t>>);
  static_assert(std::is_convertible_v<const std::vector<float>&, amlmil::span<const float>>);
  static_assert(!std::is_convertible_v<const std::vector<float>&, amlmil::span<float>>);
  static_assert(!std::is_convertible_v<std::vector<double>&, amlmil::span<const float>>);
  expect(true, "type traits (move-only, noexcept moves, span conversions)");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s ENCODER MIL BAG_DIR SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  const std::string encoder = argv[1], mil = argv[2];
  const fs::path bag_dir = argv[3], scratch = argv[4];
  try {
    check_types();
    expect(amlmil::abi_compatible() && amlmil::version() == AMLMIL_VERSION, "version " + amlmil::version());
    expect(contains(amlmil::runtime_info(), amlmil::version()), "runtime_info names the version");

    // --- errors become amlmil::Error with the status and a message naming the file
    expect_error([&] { amlmil::Session s("/nonexistent/encoder.safetensors", mil); }, AMLMIL_STATUS_IO,
                 "/nonexistent/encoder.safetensors", "missing encoder");
    expect_error([&] { amlmil::Session s(mil, mil); }, AMLMIL_STATUS_CHECKPOINT, "", "MIL file as encoder");
    expect_error(
        [&] {
          amlmil::Session s(encoder, mil, amlmil::SessionOptions().device("tpu"));
        },
        AMLMIL_STATUS_DEVICE, "tpu", "unknown device");

    expect_error(
        [&] {
          amlmil::Session s(encoder, mil, amlmil::SessionOptions().device("cpu").plugin("/nonexistent/plugin.so"));
        },
        AMLMIL_STATUS_PLUGIN, "/nonexistent/plugin.so", "missing preprocessing plugin");
    expect(!amlmil::training_cancel(), "training_cancel with no training running");

    amlmil::SessionOptions options;
    options.device("cpu").batch_size(2).warm_up(false);
    expect(options.batch_size() == 2 && options.device() == "cpu" && !options.warm_up() && options.fused(),
           "options start from amlmil_session_options_init's defaults");
    amlmil::Session session(encoder, mil, options);
    expect(static_cast<bool>(session) && session.feature_dim() == 512 && session.feature_map_len() == 512 * 25,
           "session dims");
    expect(contains(session.info(), "\"classes\""), "session info is JSON with classes");

    const auto files = cell_files(bag_dir);
    expect(files.size() >= 4, "bag has " + std::to_string(files.size()) + " cells");
    amlmil::Bag bag;
    for (std::size_t i = 0; i < files.size(); ++i) bag.add_encoded(i, read_bytes(files[i]));
    expect(bag.size() == files.size(), "bag size");

    expect_error([&] { bag.add_file(99, (bag_dir / "missing.tif").string()); }, AMLMIL_STATUS_IO, "missing.tif",
                 "missing image file");
    const std::vector<std::uint8_t> junk = {1, 2, 3, 4, 5};
    expect_error([&] { bag.add_encoded(98, junk); }, AMLMIL_STATUS_DECODE, "", "undecodable bytes");
    const std::vector<std::uint8_t> pixels(4 * 4 * 3, 128);
    expect_error([&] { bag.add_pixels(0, pixels, 4, 4, 12, amlmil::PixelFormat::rgb8); },
                 AMLMIL_STATUS_INVALID_ARGUMENT, "", "duplicate cell id");
    expect_error([&] { bag.add_pixels(97, pixels, 4, 5, 12, amlmil::PixelFormat::rgb8); },
                 AMLMIL_STATUS_INVALID_ARGUMENT, "", "pixel buffer too short");
    expect(bag.size() == files.size(), "failed adds leave the bag unchanged");
    {
      amlmil::Bag empty;
      expect_error([&] { (void)session.classify(empty); }, AMLMIL_STATUS_EMPTY_BAG, "", "empty bag");
    }
    expect_error([] { amlmil::synth_cohort("{\"bogus_key\": 1}", "/tmp/amlmil-never-written"); },
                 AMLMIL_STATUS_INVALID_ARGUMENT, "bogus_key", "unknown synth key named");
    expect_error([&] { (void)amlmil::dataset_check((scratch / "no-such-dataset").string()); },
                 AMLMIL_STATUS_DATASET, "no-such-dataset", "missing data set named");

    // --- a C++ preprocessing step: it edits and drops cells; its exception
    //     fails the call and is rethrown as thrown, and the session goes on
    {
      bool fail = false;
      std::size_t seen = 0;
      std::mutex m;
      amlmil::SessionOptions po;
      po.device("cpu").batch_size(2).warm_up(false).preprocess([&](amlmil::span<amlmil_cell> cells) {
        std::lock_guard<std::mutex> lock(m);
        if (fail) throw std::out_of_range("preprocess refused the batch");
        seen += cells.size();
        for (amlmil_cell& c : cells) c.keep = c.cell_id % 2 == 0 ? 1 : 0;
      });
      expect(static_cast<bool>(po.preprocess_function()), "options keep the C++ preprocessing");
      amlmil::Session ps(encoder, mil, po);
      po.preprocess(amlmil::PreprocessFn());  // the session keeps its own reference
      const amlmil::Result kept = ps.classify(bag);
      expect(seen == bag.size() && kept.num_cells() == (bag.size() + 1) / 2,
             "C++ preprocessing saw " + std::to_string(seen) + " cells and dropped the odd ids");
      fail = true;
      const auto rethrown = [](auto&& call) {
        try {
          call();
        } catch (const std::out_of_range& e) {
          return contains(e.what(), "refused the batch");
        } catch (...) {
        }
        return false;
      };
      expect(rethrown([&] { (void)ps.classify(bag); }), "a preprocessing exception is rethrown from classify as thrown");
      expect(rethrown([&] { (void)ps.embed(bag); }), "and from embed");
      fail = false;
      expect(ps.classify(bag).num_cells() == kept.num_cells(), "the session classifies after the exception");
    }

    // --- results equal the C API's on the same bag
    {
      const amlmil::ModelInfo m = session.model_info();
      expect(m.classes.size() == 5 && m.classes[0] == "PML_RARA" && m.input_size == 144 &&
                 m.feature_map[0] == 512 && m.feature_map[1] == 5 && m.encoder_sha256.size() == 64 &&
                 m.device == "cpu" && std::isnan(m.pixel_size_um),
             "model_info: " + std::to_string(m.classes.size()) + " classes, " + m.encoder_architecture);
      const std::vector<float> maps = session.feature_maps(bag);
      expect(maps.size() == bag.size() * session.feature_map_len(), "feature_maps size");
      std::vector<std::uint64_t> ids(bag.size());
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = i;
      const amlmil::Result cached = session.classify_features(maps, bag.size(), ids);
      const amlmil::Result direct = session.classify(bag);
      bool same = true;
      for (std::size_t k = 0; k < 5; ++k)
        same = same && std::fabs(cached.probabilities()[k] - direct.probabilities()[k]) < 1e-6f;
      expect(same, "cached feature maps classify as the bag does");
      ids.back() = 0;
      expect_error([&] { (void)session.classify_features(maps, bag.size(), ids); }, AMLMIL_STATUS_INVALID_ARGUMENT,
                   "appears earlier", "duplicate ids in classify_features");
    }
    // --- bf16 on the CPU: runs where the CPU has native bf16, else refused naming why
    {
      std::ifstream cpuinfo("/proc/cpuinfo");
      const std::string flags((std::istreambuf_iterator<char>(cpuinfo)), std::istreambuf_iterator<char>());
      const bool native = contains(flags, " avx512_bf16") || contains(flags, " amx_bf16");
      amlmil::SessionOptions bf16 = options;
      bf16.precision(amlmil::Precision::bf16);
      if (native) {
        amlmil::Session s16(encoder, mil, bf16);
        expect(s16.model_info().precision == "bf16" && session.model_info().precision == "fp32",
               "model_info reports the precision in use");
        const amlmil::Result a = session.classify(bag), b = s16.classify(bag);
        float diff = 0;
        for (std::size_t k = 0; k < 5; ++k) diff = std::max(diff, std::fabs(a.probabilities()[k] - b.probabilities()[k]));
        expect(diff > 0 && diff < 0.05f, "bf16 probabilities within rounding of fp32's: " + std::to_string(diff));
      }
      ::setenv("AMLMIL_CPU_BF16", "0", 1);  // the detection forced off
      expect_error([&] { amlmil::Session s(encoder, mil, bf16); }, AMLMIL_STATUS_UNSUPPORTED, "AMLMIL_CPU_BF16=0",
                   "bf16 without native bf16");
      ::unsetenv("AMLMIL_CPU_BF16");
    }
    session.cancel();  // cancels only calls running now: none
    const amlmil::Result result = session.classify(bag);
    const CView c = c_classify(session.get(), bag.get());
    bool attention_equal = true;
    for (std::size_t k = 0; k < result.num_classes(); ++k) {
      attention_equal = attention_equal && result.attention(k) == c.attention[k] &&
                        result.attention(k, amlmil::AttentionKind::raw) == c.raw[k];
    }
    expect(result.num_classes() == c.names.size() && result.class_names() == c.names, "class names equal C's");
    expect(result.probabilities() == c.probabilities && result.logits() == c.logits, "probabilities and logits");
    expect(result.cell_ids() == c.ids && result.num_cells() == files.size(), "cell ids");
    expect(attention_equal, "softmax and raw attention of every class");
    expect(result.predicted_class() == c.predicted && result.predicted_class_name() == c.names[c.predicted],
           "predicted " + result.predicted_class_name());
    expect(same_top(result.top_cells(result.predicted_class(), 3), c.top), "top cells");
    expect(result.top_cells(0, 1000).size() == files.size(), "top_cells(k > N) gives N");
    expect(result.to_json() == c.json, "to_json");
    expect_error([&] { (void)result.class_name(1000); }, AMLMIL_STATUS_INVALID_ARGUMENT, "class_index",
                 "class index out of range");
    expect_error([&] { (void)result.attention(1000); }, AMLMIL_STATUS_INVALID_ARGUMENT, "", "attention class");

    // --- embed into a caller's span; classify_features
    std::vector<float> features(files.size() * session.feature_dim(), -1.0f);
    session.embed(bag, amlmil::span<float>(features));
    expect(std::all_of(features.begin(), features.end(), [](float x) { return std::isfinite(x) && x >= 0.0f; }) &&
               features == session.embed(bag),
           "embed into a span equals the allocating embed");
    std::vector<float> small(features.size() - 1, 7.0f);
    expect_error([&] { session.embed(bag, amlmil::span<float>(small)); }, AMLMIL_STATUS_BUFFER_TOO_SMALL, "",
                 "embed buffer too small");
    expect(std::all_of(small.begin(), small.end(), [](float x) { return x == 7.0f; }),
           "short buffer untouched");
    std::vector<float> maps(2 * session.feature_map_len());
    for (std::size_t i = 0; i < maps.size(); ++i) maps[i] = static_cast<float>(i % 13) / 13.0f;
    const std::vector<std::uint64_t> ids = {41, 42};
    const amlmil::Result fr = session.classify_features(maps, 2, ids);
    expect(fr.cell_ids() == ids, "classify_features keeps the cell ids");
    expect(session.classify_features(maps, 2).cell_ids() == std::vector<std::uint64_t>({0, 1}),
           "classify_features default ids");
    expect_error([&] { (void)session.classify_features(maps, 2, amlmil::span<const std::uint64_t>(ids.data(), 1)); },
                 AMLMIL_STATUS_INVALID_ARGUMENT, "cell_ids", "cell id count checked");
    expect_error([&] { (void)session.classify_features(amlmil::span<const float>(maps.data(), 5), 2); },
                 AMLMIL_STATUS_INVALID_ARGUMENT, "", "feature length checked");

    // --- streaming bag classifies like the plain one
    {
      amlmil::Bag streamed;
      streamed.stream(session);
      for (std::size_t i = 0; i < files.size(); ++i) streamed.add_file(i, files[i].string());
      expect(session.classify(streamed).probabilities() == result.probabilities(), "streaming bag");
      expect_error([&] { (void)session.embed(streamed); }, AMLMIL_STATUS_INVALID_ARGUMENT, "", "embed streaming");
      streamed.clear();
      expect(streamed.size() == 0, "clear");
    }

    // --- progress: called per batch; true cancels; a throw cancels and is rethrown
    int calls = 0;
    std::uint64_t last_done = 0, last_total = 0;
    std::string stage;
    (void)session.classify(bag, [&](const amlmil::Progress& p) {
      ++calls;
      last_done = p.done;
      last_total = p.total;
      stage = std::string(p.stage);
      return false;
    });
    const int batches = static_cast<int>((files.size() + 1) / 2);
    expect(calls >= batches && last_done == files.size() && last_total == files.size() && stage == "encode",
           "progress reports every batch (" + std::to_string(calls) + " calls, last " + stage + " " +
               std::to_string(last_done) + "/" + std::to_string(last_total) + ")");
    calls = 0;
    expect_error([&] { (void)session.classify(bag, [&](const amlmil::Progress&) { return ++calls > 0; }); },
                 AMLMIL_STATUS_CANCELLED, "", "returning true cancels");
    expect(calls == 1, "cancelled at the first report");
    calls = 0;
    try {
      (void)session.classify(bag, [&](const amlmil::Progress& p) -> bool {
        ++calls;
        throw std::logic_error("callback failed at " + std::string(p.stage));
      });
      expect(false, "throwing callback: no exception");
    } catch (const std::logic_error& e) {
      expect(contains(e.what(), "callback failed at"), std::string("callback's exception rethrown: ") + e.what());
    }
    expect(calls == 1, "a throwing callback cancelled the call (" + std::to_string(calls) + " calls)");
    calls = 0;
    try {
      (void)session.embed(bag, [&](const amlmil::Progress&) -> bool {
        ++calls;
        throw 42;
      });
      expect(false, "embed: no exception");
    } catch (int e) {
      expect(e == 42 && calls == 1, "any exception type is rethrown (embed)");
    }
    // synth_cohort cannot cancel: the call completes, then the exception comes back.
    const fs::path cohort = scratch / "cohort";
    calls = 0;
    try {
      (void)amlmil::synth_cohort(
          "{\"patients_per_class\": 1, \"cells_min\": 2, \"cells_max\": 2, \"image_size\": 64, \"threads\": 1}",
          cohort.string(), [&](const amlmil::Progress&) -> bool {
            ++calls;
            throw std::runtime_error("stop");
          });
      expect(false, "synth: no exception");
    } catch (const amlmil::Error&) {
      expect(false, "synth: got amlmil::Error instead of the callback's exception");
    } catch (const std::runtime_error& e) {
      expect(std::string(e.what()) == "stop" && calls == 1 && fs::exists(cohort / "metadata.csv"),
             "synth rethrows after writing the cohort; callback not called again");
    }
    expect(contains(amlmil::dataset_check(cohort.string()), "\"summary\""), "dataset_check on the cohort");

    // --- move semantics: moved-from objects are empty and safe
    amlmil::Session moved = std::move(session);
    expect(!session && session.get() == nullptr && session.feature_dim() == 0 && moved.feature_dim() == 512,
           "moved-from session is empty");
    expect_error([&] { (void)session.classify(bag); }, AMLMIL_STATUS_NULL_ARGUMENT, "session",
                 "classify on a moved-from session");
    expect(moved.classify(bag).probabilities() == result.probabilities(), "moved-to session classifies");
    amlmil::Bag bag2 = std::move(bag);
    expect(!bag && bag.size() == 0 && bag2.size() == files.size(), "moved-from bag is empty");
    expect_error([&] { bag.add_file(1, files[0].string()); }, AMLMIL_STATUS_NULL_ARGUMENT, "bag",
                 "add to a moved-from bag");
    amlmil::Result r1 = moved.classify(bag2);
    amlmil::Result r2 = std::move(r1);
    expect(!r1 && r1.num_classes() == 0 && r1.num_cells() == 0 && r2.num_cells() == files.size(),
           "moved-from result is empty");
    expect_error([&] { (void)r1.probabilities(); }, AMLMIL_STATUS_NULL_ARGUMENT, "result",
                 "read a moved-from result");
    expect_error([&] { (void)r1.class_name(0); }, AMLMIL_STATUS_NULL_ARGUMENT, "moved from", "name of a moved-from result");
    r2 = moved.classify(bag2);  // frees the old result
    amlmil::Result& alias = r2;
    r2 = std::move(alias);  // self-move keeps it
    expect(r2.num_cells() == files.size(), "move assignment");
    amlmil::Session other;
    other = std::move(moved);
    expect(static_cast<bool>(other) && !moved, "session move assignment");
    amlmil_result* raw = r2.release();
    expect(raw != nullptr && !r2, "release gives up ownership");
    amlmil_result_free(raw);

    // --- log callback receives the library's records (every failure is logged at debug)
    std::mutex log_lock;
    std::vector<std::string> records;
    amlmil::set_log_callback(
        [&](amlmil::LogLevel, std::string_view, std::string_view message) {
          std::lock_guard<std::mutex> g(log_lock);
          records.emplace_back(message);
        },
        amlmil::LogLevel::debug);
    try {
      bag2.add_file(1000, "/nonexistent/logged.tif");
    } catch (const amlmil::Error&) {
    }
    amlmil::set_log_callback(nullptr);
    bool logged = false;
    {
      std::lock_guard<std::mutex> g(log_lock);
      for (const auto& r : records) logged = logged || contains(r, "logged.tif");
    }
    expect(logged, "log callback got the failure (" + std::to_string(records.size()) + " records)");
  } catch (const std::exception& e) {
    std::printf("FAILED: unexpected exception: %s\n", e.what());
    return 1;
  }
  if (failures != 0) {
    std::printf("%d checks failed\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
