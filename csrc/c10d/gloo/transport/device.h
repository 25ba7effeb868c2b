// See ../README.md: names ProcessGroupGloo.hpp mentions, nothing more.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
