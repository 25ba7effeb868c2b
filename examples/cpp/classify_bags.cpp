// classify_bags.cpp — classify several patients' bags in parallel with libamlmil's
// C++ wrapper (bindings/cpp/amlmil.hpp).
//
//   c++ -std=c++17 -pthread -Iinclude -Ibindings/cpp examples/cpp/classify_bags.cpp
//       -o classify_bags -Ltarget/debug -lamlmil -Wl,-rpath,$PWD/target/debug  (one line)
//   ./classify_bags ENCODER.safetensors MIL.safetensors BAG_DIR...
//
// Or, against an installed libamlmil, with CMake (examples/cpp/CMakeLists.txt):
//   cmake -S examples/cpp -B build -DCMAKE_PREFIX_PATH=PREFIX && cmake --build build
//
// One session is shared by one thread per bag (sessions are thread-safe). Cells
// are read into memory and handed over as encoded bytes, as scanner software that
// already holds the crops would do. The wrapper's RAII classes free every handle;
// failures arrive as amlmil::Error.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "amlmil.hpp"

namespace fs = std::filesystem;

namespace {

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

std::string classify(const amlmil::Session& session, const fs::path& dir) {
  const auto files = cell_files(dir);
  amlmil::Bag bag;
  for (std::size_t i = 0; i < files.size(); ++i) {
    std::ifstream in(files[i], std::ios::binary);
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bag.add_encoded(i, bytes);
  }
  const amlmil::Result result = session.classify(bag);
  const std::size_t predicted = result.predicted_class();
  const std::vector<float> probs = result.probabilities();
  const std::vector<std::string> names = result.class_names();

  std::string out = dir.string() + ": " + std::to_string(files.size()) + " cells, predicted " + names[predicted] + "\n";
  for (std::size_t c = 0; c < names.size(); ++c) {
    char line[96];
    std::snprintf(line, sizeof line, "  %-14s %.4f\n", names[c].c_str(), probs[c]);
    out += line;
  }
  const auto top = result.top_cells(predicted, 3);
  for (std::size_t i = 0; i < top.size(); ++i) {
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
    const amlmil::Session session(argv[1], argv[2]);

    std::vector<std::string> reports(argc - 3);
    std::vector<std::string> errors;
    std::mutex errors_lock;
    std::vector<std::thread> threads;
    for (int i = 3; i < argc; ++i) {
      threads.emplace_back([&, i] {
        try {
          reports[i - 3] = classify(session, argv[i]);
        } catch (const amlmil::Error& e) {
          std::lock_guard<std::mutex> g(errors_lock);
          errors.push_back(std::string(argv[i]) + ": " + e.status_name() + ": " + e.what());
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> g(errors_lock);
          errors.push_back(std::string(argv[i]) + ": " + e.what());
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& r : reports) std::fputs(r.c_str(), stdout);
    for (const auto& e : errors) std::fprintf(stderr, "error: %s\n", e.c_str());
    return errors.empty() ? 0 : 1;
  } catch (const amlmil::Error& e) {
    std::fprintf(stderr, "error: %s: %s\n", e.status_name(), e.what());
    return 1;
  }
}
