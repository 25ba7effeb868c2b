// classify_bags.cpp — classify several patients' bags in parallel with libamlmil.
//
//   c++ -std=c++17 -pthread -Iinclude examples/cpp/classify_bags.cpp -o classify_bags
//       -Ltarget/debug -lamlmil -Wl,-rpath,$PWD/target/debug      (one command line)
//   ./classify_bags ENCODER.safetensors MIL.safetensors BAG_DIR...
//
// One session is shared by one thread per bag (sessions are thread-safe). Cells
// are read into memory and handed over as encoded bytes, as scanner software that
// already holds the crops would do. RAII wrappers free every handle.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "amlmil.h"

namespace fs = std::filesystem;

namespace {

void check(amlmil_status status, const char* what) {
  if (status != AMLMIL_STATUS_OK) {
    throw std::runtime_error(std::string(what) + ": " + amlmil_status_name(status) + ": " +
                             amlmil_last_error());
  }
}

struct SessionDeleter {
  void operator()(amlmil_session* s) const { amlmil_session_free(s); }
};
struct BagDeleter {
  void operator()(amlmil_bag* b) const { amlmil_bag_free(b); }
};
struct ResultDeleter {
  void operator()(amlmil_result* r) const { amlmil_result_free(r); }
};
using Session = std::unique_ptr<amlmil_session, SessionDeleter>;
using Bag = std::unique_ptr<amlmil_bag, BagDeleter>;
using Result = std::unique_ptr<amlmil_result, ResultDeleter>;

std::vector<fs::path> cell_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto ext = e.path().extension().string();
    if (ext == ".tif" || ext == ".tiff" || ext == ".png" || ext == ".jpg" || ext == ".jpeg") {
      files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string classify(const amlmil_session* session, const fs::path& dir) {
  auto files = cell_files(dir);
  amlmil_bag* raw_bag = nullptr;
  check(amlmil_bag_new(&raw_bag), "amlmil_bag_new");
  Bag bag(raw_bag);
  for (std::size_t i = 0; i < files.size(); ++i) {
    std::ifstream in(files[i], std::ios::binary);
    std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    check(amlmil_bag_add_encoded(bag.get(), i, bytes.data(), bytes.size()), files[i].c_str());
  }
  amlmil_result* raw_result = nullptr;
  check(amlmil_session_classify(session, bag.get(), nullptr, nullptr, &raw_result), "amlmil_session_classify");
  Result result(raw_result);

  std::size_t n_classes = amlmil_result_num_classes(result.get());
  std::vector<float> probs(n_classes);
  check(amlmil_result_probabilities(result.get(), probs.data(), probs.size()), "probabilities");
  std::size_t predicted = 0;
  check(amlmil_result_predicted_class(result.get(), &predicted), "predicted class");
  std::vector<amlmil_ranked_cell> top(3);
  std::size_t written = 0;
  check(amlmil_result_top_cells(result.get(), predicted, top.size(), top.data(), top.size(), &written), "top cells");

  std::string out = dir.string() + ": " + std::to_string(files.size()) + " cells, predicted " +
                    amlmil_result_class_name(result.get(), predicted) + "\n";
  for (std::size_t c = 0; c < n_classes; ++c) {
    char line[96];
    std::snprintf(line, sizeof line, "  %-14s %.4f\n", amlmil_result_class_name(result.get(), c), probs[c]);
    out += line;
  }
  for (std::size_t i = 0; i < written; ++i) {
    char line[256];
    std::snprintf(line, sizeof line, "  top %zu: %s (attention %.4f)\n", i + 1,
                  files[top[i].cell_id].filename().c_str(), top[i].attention);
    out += line;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ENCODER MIL BAG_DIR...\n", argv[0]);
    return 2;
  }
  try {
    amlmil_session_options options;
    check(amlmil_session_options_init(&options), "options");
    amlmil_session* raw = nullptr;
    check(amlmil_session_new(argv[1], argv[2], &options, &raw), "amlmil_session_new");
    Session session(raw);

    std::vector<std::string> reports(argc - 3);
    std::vector<std::string> errors;
    std::mutex errors_lock;
    std::vector<std::thread> threads;
    for (int i = 3; i < argc; ++i) {
      threads.emplace_back([&, i] {
        try {
          reports[i - 3] = classify(session.get(), argv[i]);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> g(errors_lock);
          errors.push_back(e.what());
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& r : reports) std::fputs(r.c_str(), stdout);
    for (const auto& e : errors) std::fprintf(stderr, "error: %s\n", e.c_str());
    return errors.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
