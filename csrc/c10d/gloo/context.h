// See README.md: names ProcessGroupGloo.hpp mentions, nothing more.
#pragma once
#include <chrono>

namespace gloo {
// Held through std::shared_ptr only; setTimeout is named by an inline
// member of ProcessGroupGloo that this project never calls.
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
