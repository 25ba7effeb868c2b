// Classifies one bag of cell images: minimal.cpp ENCODER MIL IMAGE...
#include <cstdio>

#include "amlmil.hpp"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ENCODER MIL IMAGE...\n", argv[0]);
    return 2;
  }
  try {
    amlmil::Session session(argv[1], argv[2], amlmil::SessionOptions().device("cpu"));
    amlmil::Bag bag;
    for (int i = 3; i < argc; ++i) bag.add_file(i - 3, argv[i]);
    amlmil::Result result = session.classify(bag);
    std::printf("predicted: %s\n", result.predicted_class_name().c_str());
    for (const amlmil::RankedCell& cell : result.top_cells(result.predicted_class(), 3)) {
      std::printf("  %s attention %.3f\n", argv[3 + cell.cell_id], cell.attention);
    }
    return 0;
  } catch (const amlmil::Error& e) {
    std::fprintf(stderr, "%s: %s\n", e.status_name(), e.what());
    return 1;
  }
}
