/**
 * @file amlmil.hpp
 * @brief Header-only C++17 wrapper of the libamlmil C ABI (amlmil.h).
 *
 * Every C handle has a move-only RAII owner (amlmil::Session, amlmil::Bag,
 * amlmil::Result); every non-OK status becomes an amlmil::Error carrying the
 * status and the library's message (which names the argument or file); strings
 * the library returns are freed for you. A moved-from object is empty: it is
 * safe to destroy or to assign to, its size-like queries return 0 and its other
 * calls throw amlmil::Error (AMLMIL_STATUS_NULL_ARGUMENT).
 *
 * Progress callbacks are `std::function<bool(const Progress&)>`: return `true`
 * to cancel. An exception thrown by a callback never crosses the C library: it
 * is caught, the call is cancelled (where the call can be cancelled), and the
 * exception is rethrown once the C call has returned.
 *
 * Thread safety is the C library's: `const` member functions of Session and
 * Result may be called from several threads at once.
 */
#ifndef AMLMIL_HPP
#define AMLMIL_HPP

#if __cplusplus < 201703L
#error "amlmil.hpp needs C++17 (-std=c++17); C++11 code can use amlmil.h directly"
#endif

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "amlmil.h"

/** @brief The C++ wrapper of libamlmil. */
namespace amlmil {

/** @brief A status of the C ABI (`AMLMIL_STATUS_OK`, `AMLMIL_STATUS_IO`, ...). */
using Status = amlmil_status;

/** @brief One cell of an attention ranking (cell id, bag position, attention). */
using RankedCell = amlmil_ranked_cell;

/** @brief Channel order of a raw pixel buffer. */
enum class PixelFormat : std::uint32_t {
  rgb8 = AMLMIL_PIXEL_FORMAT_RGB8,   ///< 3 bytes a pixel: red, green, blue.
  rgba8 = AMLMIL_PIXEL_FORMAT_RGBA8, ///< 4 bytes a pixel: red, green, blue, alpha.
  bgr8 = AMLMIL_PIXEL_FORMAT_BGR8,   ///< 3 bytes a pixel: blue, green, red.
  bgra8 = AMLMIL_PIXEL_FORMAT_BGRA8, ///< 4 bytes a pixel: blue, green, red, alpha.
};

/** @brief Which attention Result::attention returns. */
enum class AttentionKind : std::uint32_t {
  softmax = AMLMIL_ATTENTION_KIND_SOFTMAX, ///< Softmax over the cells; each class's row sums to 1.
  raw = AMLMIL_ATTENTION_KIND_RAW,         ///< Scores before the softmax.
};

/** @brief Arithmetic of the encoder. */
enum class Precision : std::uint32_t {
  fp32 = AMLMIL_PRECISION_FP32, ///< 32-bit float (default).
  fp16 = AMLMIL_PRECISION_FP16, ///< 16-bit float (CUDA only).
  bf16 = AMLMIL_PRECISION_BF16, ///< bfloat16: CUDA, or a CPU with avx512_bf16/AMX (else AMLMIL_STATUS_UNSUPPORTED).
};

/** @brief Log levels of set_log_callback. */
enum class LogLevel : std::uint32_t {
  off = AMLMIL_LOG_LEVEL_OFF,     ///< No records.
  error = AMLMIL_LOG_LEVEL_ERROR, ///< Errors.
  warn = AMLMIL_LOG_LEVEL_WARN,   ///< Warnings and above.
  info = AMLMIL_LOG_LEVEL_INFO,   ///< Information and above.
  debug = AMLMIL_LOG_LEVEL_DEBUG, ///< Debugging records and above.
  trace = AMLMIL_LOG_LEVEL_TRACE, ///< Everything.
};

/**
 * @brief A failed libamlmil call: the status and the library's message.
 *
 * `what()` is the message of amlmil_last_error() at the time of the failure
 * (it names the argument, file or shape), or the wrapper's own message for
 * errors it detects before calling the library.
 */
class Error : public std::runtime_error {
 public:
  /** @brief An error with status @p status and message @p message. */
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}

  /** @brief The status the call returned. */
  Status status() const noexcept { return status_; }

  /** @brief The status's name, e.g. `"AMLMIL_STATUS_IO"`; static, never NULL. */
  const char* status_name() const noexcept { return amlmil_status_name(status_); }

 private:
  Status status_;
};

/**
 * @brief A non-owning view of @p T elements: a pointer and a count.
 *
 * A minimal stand-in for C++20's `std::span`. Converts implicitly from any
 * contiguous container with `data()` and `size()` whose elements have the
 * view's type (std::vector, std::array) and from C arrays. The viewed memory must outlive
 * the call it is passed to.
 */
template <class T>
class span {
  template <class C>
  using data_t = decltype(std::declval<C&>().data());
  template <class C>
  using if_container = std::enable_if_t<
      !std::is_same_v<std::remove_cv_t<std::remove_reference_t<C>>, span> &&
      std::is_convertible_v<data_t<C>, T*> &&
      sizeof(std::remove_pointer_t<data_t<C>>) == sizeof(T)>;

 public:
  using element_type = T;        ///< The element type, with its constness.
  using size_type = std::size_t; ///< Type of sizes.

  /** @brief An empty view. */
  constexpr span() noexcept = default;
  /** @brief A view of @p size elements at @p data. */
  constexpr span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  /** @brief A view of a C array. */
  template <std::size_t N>
  constexpr span(T (&array)[N]) noexcept : data_(array), size_(N) {}
  /** @brief A view of a contiguous container's elements. */
  template <class C, class = if_container<C>>
  constexpr span(C&& container) noexcept : data_(container.data()), size_(container.size()) {}

  /** @brief The first element (NULL for an empty view made without a pointer). */
  constexpr T* data() const noexcept { return data_; }
  /** @brief Number of elements. */
  constexpr std::size_t size() const noexcept { return size_; }
  /** @brief Whether the view has no elements. */
  constexpr bool empty() const noexcept { return size_ == 0; }
  /** @brief Element @p i (unchecked). */
  constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
  /** @brief Iterator to the first element. */
  constexpr T* begin() const noexcept { return data_; }
  /** @brief Iterator past the last element. */
  constexpr T* end() const noexcept { return data_ + size_; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/** @brief Progress of a long call, as the library reports it. */
struct Progress {
  std::string_view stage; ///< What is running, e.g. `"encode"`; valid during the callback only.
  std::uint64_t done;     ///< Units done in this stage (e.g. cells encoded).
  std::uint64_t total;    ///< Units in this stage.
  std::int32_t epoch;     ///< Training epoch, or -1 when not applicable.
  std::int32_t fold;      ///< Cross-validation fold, or -1 when not applicable.
  double loss;            ///< Current loss, or NaN when not applicable.
};

/**
 * @brief A progress callback: return `true` to cancel the call.
 *
 * Called on the calling thread. An exception it throws cancels the call and
 * is rethrown after the call returns; an empty function means no callback.
 */
using ProgressFn = std::function<bool(const Progress&)>;

/**
 * @brief A log callback: level, target (module) and message of one record.
 *
 * May be called from any thread that runs library code, concurrently; the
 * views are valid during the call only. Exceptions it throws are swallowed
 * (there is no caller to rethrow them to).
 */
using LogFn = std::function<void(LogLevel level, std::string_view target, std::string_view message)>;

/**
 * @brief A C++ preprocessing step: edits one batch of cells in place before
 * they are encoded (pixels, or `keep = 0` to drop a cell); see
 * amlmil_preprocess_callback for when it runs. It must be thread-safe when
 * several threads classify on one session. An exception it throws fails the
 * call with AMLMIL_STATUS_PLUGIN inside the library and is rethrown, as it
 * was thrown, from the wrapper call that ran it (classify, embed, …).
 */
using PreprocessFn = std::function<void(span<amlmil_cell> cells)>;

/** @cond AMLMIL_DETAIL */
namespace detail {

[[noreturn]] inline void fail(Status status, const std::string& message) { throw Error(status, message); }

/** The exception a PreprocessFn threw on this thread, until the call that ran it returns. */
inline std::exception_ptr& preprocess_error() noexcept {
  thread_local std::exception_ptr error;
  return error;
}

inline void check(Status status) {
  if (status == AMLMIL_STATUS_PLUGIN) {
    if (std::exception_ptr e = std::exchange(preprocess_error(), nullptr)) std::rethrow_exception(e);
  }
  if (status != AMLMIL_STATUS_OK) fail(status, amlmil_last_error());
}

/** Runs a PreprocessFn from the library; keeps its exception for check(). */
inline std::int32_t preprocess_trampoline(void* user_data, amlmil_cell* cells, std::size_t num_cells) noexcept {
  const auto* fn = static_cast<const PreprocessFn*>(user_data);
  if (fn == nullptr || !*fn) return 0;
  try {
    (*fn)(span<amlmil_cell>(cells, num_cells));
    return 0;
  } catch (...) {
    preprocess_error() = std::current_exception();
    return 1;
  }
}

/** Owns a string returned by the library; frees it with amlmil_string_free. */
class OwnedString {
 public:
  OwnedString() noexcept = default;
  OwnedString(const OwnedString&) = delete;
  OwnedString& operator=(const OwnedString&) = delete;
  ~OwnedString() { amlmil_string_free(ptr_); }
  char** out() noexcept { return &ptr_; }
  std::string str() const { return ptr_ ? std::string(ptr_) : std::string(); }

 private:
  char* ptr_ = nullptr;
};

/** Bridges a ProgressFn to amlmil_progress_callback; keeps its exception. */
class ProgressBridge {
 public:
  explicit ProgressBridge(const ProgressFn& fn) noexcept : fn_(fn) {}
  amlmil_progress_callback callback() const noexcept { return fn_ ? &ProgressBridge::trampoline : nullptr; }
  void* user_data() noexcept { return this; }
  /** Rethrows the callback's exception, else throws for a non-OK status. */
  void finish(Status status) const {
    if (error_) std::rethrow_exception(error_);
    check(status);
  }

 private:
  static std::int32_t trampoline(void* user_data, const amlmil_progress* p) noexcept {
    auto* self = static_cast<ProgressBridge*>(user_data);
    if (self == nullptr || p == nullptr) return 0;
    if (self->error_) return 1;  // keep asking the library to stop
    try {
      const Progress progress{p->stage ? std::string_view(p->stage) : std::string_view(),
                              p->done, p->total, p->epoch, p->fold, p->loss};
      return self->fn_(progress) ? 1 : 0;
    } catch (...) {
      self->error_ = std::current_exception();
      return 1;
    }
  }

  const ProgressFn& fn_;
  std::exception_ptr error_;
};

/** NULL for an empty string (the C API's "default"), else the string. */
inline const char* or_null(const std::string& s) noexcept { return s.empty() ? nullptr : s.c_str(); }

/** The process-wide log callback; never destroyed (records may arrive during exit). */
struct LogState {
  std::mutex lock;
  std::shared_ptr<const LogFn> fn;

  static LogState& get() {
    static LogState* state = new LogState();
    return *state;
  }

  static void trampoline(void*, std::uint32_t level, const char* target, const char* message) noexcept {
    try {
      std::shared_ptr<const LogFn> fn;
      {
        LogState& s = get();
        std::lock_guard<std::mutex> guard(s.lock);
        fn = s.fn;
      }
      if (fn && *fn) {
        (*fn)(static_cast<LogLevel>(level), target ? std::string_view(target) : std::string_view(),
              message ? std::string_view(message) : std::string_view());
      }
    } catch (...) {
      // Nobody to rethrow to: the record is dropped.
    }
  }
};

}  // namespace detail
/** @endcond */

/** @brief The library's version, e.g. `"0.1.0"` (compare with AMLMIL_VERSION). */
inline std::string version() { return amlmil_version(); }

/** @brief The ABI version of the loaded library (compare with AMLMIL_ABI_VERSION). */
inline std::uint32_t abi_version() noexcept { return amlmil_abi_version(); }

/** @brief Whether the loaded library has the ABI this header was written for. */
inline bool abi_compatible() noexcept { return amlmil_abi_version() == AMLMIL_ABI_VERSION; }

/** @brief Number of CUDA devices libtorch can use (0 without a GPU). */
inline std::uint32_t cuda_device_count() noexcept { return amlmil_cuda_device_count(); }

/** @brief The name of a status, e.g. `"AMLMIL_STATUS_OK"`; static, never NULL. */
inline const char* status_name(Status status) noexcept { return amlmil_status_name(status); }

/**
 * @brief Cancels the training call running in this process (from any thread).
 * @return true if one was running.
 */
inline bool training_cancel() noexcept { return amlmil_training_cancel() != 0; }

/** @brief Runtime facts as JSON: library, ABI and libtorch versions, CUDA devices, threads. */
inline std::string runtime_info() {
  detail::OwnedString json;
  detail::check(amlmil_runtime_info(json.out()));
  return json.str();
}

/**
 * @brief Options of a Session, starting from the library's defaults
 * (amlmil_session_options_init). Setters return `*this` for chaining.
 */
class SessionOptions {
 public:
  /** @brief The defaults of the loaded library. */
  // What the header's amlmil_session_options_init(&raw_) macro expands to.
  SessionOptions() : raw_() { detail::check(amlmil_session_options_init_sized(&raw_, sizeof raw_)); }

  /** @brief `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`; empty means `"auto"`. */
  SessionOptions& device(std::string device) {
    device_ = std::move(device);
    return *this;
  }
  /** @brief Arithmetic of the encoder. */
  SessionOptions& precision(Precision precision) noexcept {
    raw_.precision = static_cast<std::uint32_t>(precision);
    return *this;
  }
  /** @brief Cells per encoder forward pass. */
  SessionOptions& batch_size(std::uint32_t cells) noexcept {
    raw_.batch_size = cells;
    return *this;
  }
  /** @brief libtorch intra-op threads (process-wide); 0 keeps libtorch's default. */
  SessionOptions& num_threads(std::uint32_t threads) noexcept {
    raw_.num_threads = threads;
    return *this;
  }
  /** @brief NHWC strides on the CPU (faster) instead of plain NCHW. */
  SessionOptions& channels_last(bool on) noexcept {
    raw_.channels_last = on ? 1 : 0;
    return *this;
  }
  /** @brief Fused (batch norm folded, pre-packed) CPU encoder. */
  SessionOptions& fused(bool on) noexcept {
    raw_.fused = on ? 1 : 0;
    return *this;
  }
  /** @brief Run one small batch when the session is made. */
  SessionOptions& warm_up(bool on) noexcept {
    raw_.warm_up = on ? 1 : 0;
    return *this;
  }
  /** @brief Most cells one call takes (AMLMIL_STATUS_LIMIT above it). */
  SessionOptions& max_cells_per_bag(std::uint64_t cells) noexcept {
    raw_.max_cells_per_bag = cells;
    return *this;
  }
  /** @brief Most bytes of encoder working memory per batch; 0: half the physical memory. */
  SessionOptions& max_batch_bytes(std::uint64_t bytes) noexcept {
    raw_.max_batch_bytes = bytes;
    return *this;
  }

  /**
   * @brief A Rust preprocessing plugin (shared library built against the
   * `amlmil-plugin` crate) and its configuration string; loaded by the
   * Session constructor, which throws AMLMIL_STATUS_PLUGIN for a missing or
   * incompatible file. An empty path means none.
   */
  SessionOptions& plugin(std::string path, std::string config = std::string()) {
    plugin_path_ = std::move(path);
    plugin_config_ = std::move(config);
    return *this;
  }
  /**
   * @brief A C preprocessing callback (see amlmil_preprocess_callback); it must
   * be thread-safe and must not throw. NULL removes it.
   */
  SessionOptions& preprocess(amlmil_preprocess_callback callback, void* user_data) noexcept {
    preprocess_fn_.reset();
    raw_.preprocess = callback;
    raw_.preprocess_user_data = user_data;
    return *this;
  }
  /**
   * @brief A C++ preprocessing step (see PreprocessFn): exceptions it throws
   * are rethrown from the call that ran it. The Session made from these
   * options keeps its own reference to it. An empty function removes it.
   */
  SessionOptions& preprocess(PreprocessFn fn) {
    if (!fn) return preprocess(nullptr, nullptr);
    preprocess_fn_ = std::make_shared<const PreprocessFn>(std::move(fn));
    raw_.preprocess = &detail::preprocess_trampoline;
    raw_.preprocess_user_data = const_cast<PreprocessFn*>(preprocess_fn_.get());
    return *this;
  }
  /** @brief The C++ preprocessing step, or null (none, or a C callback). */
  const std::shared_ptr<const PreprocessFn>& preprocess_function() const noexcept { return preprocess_fn_; }

  /** @brief The device string (empty: `"auto"`). */
  const std::string& device() const noexcept { return device_; }
  /** @brief The plugin path (empty: none). */
  const std::string& plugin_path() const noexcept { return plugin_path_; }
  /** @brief The precision. */
  Precision precision() const noexcept { return static_cast<Precision>(raw_.precision); }
  /** @brief Cells per encoder forward pass. */
  std::uint32_t batch_size() const noexcept { return raw_.batch_size; }
  /** @brief libtorch intra-op threads (0: libtorch's default). */
  std::uint32_t num_threads() const noexcept { return raw_.num_threads; }
  /** @brief Whether the CPU encoder uses NHWC strides. */
  bool channels_last() const noexcept { return raw_.channels_last != 0; }
  /** @brief Whether the CPU encoder is fused. */
  bool fused() const noexcept { return raw_.fused != 0; }
  /** @brief Whether the session warms up. */
  bool warm_up() const noexcept { return raw_.warm_up != 0; }

  /** @brief The C struct; its `device` points into this object. */
  amlmil_session_options c_options() const noexcept {
    amlmil_session_options o = raw_;
    o.device = detail::or_null(device_);
    o.plugin_path = detail::or_null(plugin_path_);
    o.plugin_config = plugin_path_.empty() ? nullptr : plugin_config_.c_str();
    return o;
  }

 private:
  amlmil_session_options raw_;
  std::string device_ = "auto";
  std::string plugin_path_;
  std::string plugin_config_;
  std::shared_ptr<const PreprocessFn> preprocess_fn_;
};

/**
 * @brief A classification: class names, probabilities, logits and the
 * attention of every cell. Immutable; any number of threads may read it.
 */
class Result {
 public:
  /** @brief An empty result (what a moved-from result is). */
  Result() noexcept = default;
  /** @brief Takes ownership of @p result (freed with amlmil_result_free). */
  explicit Result(amlmil_result* result) noexcept : ptr_(result) {}
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
  /** @brief Moves; @p other is left empty. */
  Result(Result&& other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)) {}
  /** @brief Frees this result and takes @p other's; @p other is left empty. */
  Result& operator=(Result&& other) noexcept {
    if (this != &other) amlmil_result_free(std::exchange(ptr_, std::exchange(other.ptr_, nullptr)));
    return *this;
  }
  ~Result() { amlmil_result_free(ptr_); }

  /** @brief Whether this object holds a result. */
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  /** @brief The C handle (NULL when empty); still owned by this object. */
  const amlmil_result* get() const noexcept { return ptr_; }
  /** @brief Gives up ownership: the caller frees the handle with amlmil_result_free. */
  amlmil_result* release() noexcept { return std::exchange(ptr_, nullptr); }

  /** @brief Number of classes C (0 when empty). */
  std::size_t num_classes() const noexcept { return amlmil_result_num_classes(ptr_); }
  /** @brief Number of cells N (0 when empty). */
  std::size_t num_cells() const noexcept { return amlmil_result_num_cells(ptr_); }

  /** @brief Name of class @p class_index (bag label, e.g. `"PML_RARA"`). */
  std::string class_name(std::size_t class_index) const {
    const char* name = amlmil_result_class_name(ptr_, class_index);
    if (name == nullptr) {
      if (ptr_ == nullptr) {
        detail::fail(AMLMIL_STATUS_NULL_ARGUMENT, "argument `result` is NULL (the Result is empty or moved from)");
      }
      detail::fail(AMLMIL_STATUS_INVALID_ARGUMENT, "invalid argument `class_index`: " + std::to_string(class_index) +
                                                       " is out of range (result has " +
                                                       std::to_string(num_classes()) + " classes)");
    }
    return name;
  }
  /** @brief The names of all classes, in class order. */
  std::vector<std::string> class_names() const {
    std::vector<std::string> names;
    names.reserve(num_classes());
    for (std::size_t c = 0; c < num_classes(); ++c) names.push_back(class_name(c));
    return names;
  }
  /** @brief Index of the predicted (most probable) class. */
  std::size_t predicted_class() const {
    std::size_t c = 0;
    detail::check(amlmil_result_predicted_class(ptr_, &c));
    return c;
  }
  /** @brief Name of the predicted class. */
  std::string predicted_class_name() const { return class_name(predicted_class()); }
  /** @brief The C class probabilities (softmax of the logits). */
  std::vector<float> probabilities() const {
    std::vector<float> out(num_classes());
    detail::check(amlmil_result_probabilities(ptr_, out.data(), out.size()));
    return out;
  }
  /** @brief The C logits. */
  std::vector<float> logits() const {
    std::vector<float> out(num_classes());
    detail::check(amlmil_result_logits(ptr_, out.data(), out.size()));
    return out;
  }
  /** @brief The N cell ids, in bag order. */
  std::vector<std::uint64_t> cell_ids() const {
    std::vector<std::uint64_t> out(num_cells());
    detail::check(amlmil_result_cell_ids(ptr_, out.data(), out.size()));
    return out;
  }
  /** @brief Attention of every cell (bag order) for class @p class_index. */
  std::vector<float> attention(std::size_t class_index, AttentionKind kind = AttentionKind::softmax) const {
    std::vector<float> out(num_cells());
    detail::check(amlmil_result_attention(ptr_, class_index, static_cast<std::uint32_t>(kind), out.data(),
                                          out.size()));
    return out;
  }
  /** @brief The @p k cells with the highest attention for @p class_index, highest first. */
  std::vector<RankedCell> top_cells(std::size_t class_index, std::size_t k) const {
    std::vector<RankedCell> out(k < num_cells() ? k : num_cells());
    std::size_t written = 0;
    detail::check(amlmil_result_top_cells(ptr_, class_index, k, out.data(), out.size(), &written));
    out.resize(written);
    return out;
  }
  /** @brief The whole result as JSON. */
  std::string to_json() const {
    detail::OwnedString json;
    detail::check(amlmil_result_to_json(ptr_, json.out()));
    return json.str();
  }

 private:
  amlmil_result* ptr_ = nullptr;
};

class Bag;

/**
 * @brief An encoder and an attention-MIL head loaded on a device.
 *
 * Thread-safe: any number of threads may classify with one session at once.
 * No call may be running when it is destroyed or assigned to.
 */
/** @brief Typed model metadata of a session (see amlmil_model_info). */
struct ModelInfo {
  std::vector<std::string> classes;        ///< Class names in output order.
  std::uint32_t input_size = 0;            ///< Side of the square encoder input, px.
  std::uint32_t feature_dim = 0;           ///< Pooled feature length (512).
  std::array<std::uint32_t, 3> feature_map{};  ///< Channels, height, width of a cell's map.
  double pixel_size_um = 0;                ///< µm per pixel, NaN when not recorded.
  std::string encoder_architecture;        ///< "resnet18" or "resnet34".
  std::string encoder_method;              ///< "simclr", "dino", "swav", "supervised", …
  std::string encoder_sha256;              ///< Content hash ("" before checksums).
  std::string mil_method;                  ///< "mil" when trained by libamlmil.
  std::string mil_sha256;                  ///< Content hash ("" before checksums).
  std::string mil_tool;                    ///< Tool that wrote the head.
  std::string device;                      ///< "cpu" or "cuda:N".
  std::string precision;                   ///< The encoder's arithmetic: "fp32", "fp16" or "bf16".
  std::uint32_t num_heads = 1;             ///< MIL heads: 1, or K >= 2 for an ensemble (ensemble()).
};

class Session {
 public:
  /** @brief An empty session (what a moved-from session is). */
  Session() noexcept = default;
  /**
   * @brief Loads the encoder and MIL checkpoints (`.safetensors` paths).
   * @throws Error AMLMIL_STATUS_IO, _CHECKPOINT, _MISMATCH, _DEVICE, _INVALID_ARGUMENT.
   */
  Session(const std::string& encoder_path, const std::string& mil_path,
          const SessionOptions& options = SessionOptions()) {
    const amlmil_session_options o = options.c_options();
    detail::check(amlmil_session_new(encoder_path.c_str(), mil_path.c_str(), &o, &ptr_));
    preprocess_ = options.preprocess_function();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  /** @brief Moves; @p other is left empty. */
  Session(Session&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), preprocess_(std::move(other.preprocess_)) {}
  /** @brief Frees this session and takes @p other's; @p other is left empty. */
  Session& operator=(Session&& other) noexcept {
    if (this != &other) {
      amlmil_session_free(std::exchange(ptr_, std::exchange(other.ptr_, nullptr)));
      preprocess_ = std::move(other.preprocess_);
    }
    return *this;
  }
  ~Session() { amlmil_session_free(ptr_); }

  /** @brief Whether this object holds a session. */
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  /** @brief The C handle (NULL when empty); still owned by this object. */
  const amlmil_session* get() const noexcept { return ptr_; }

  /** @brief Classifies a bag. @p progress is called before each encoder batch (the first report has
   *  `done` 0) and once after the last; returning true cancels. */
  Result classify(const Bag& bag, const ProgressFn& progress = {}) const;

  /**
   * @brief Classifies precomputed encoder feature maps.
   * @param features `num_cells` × feature_map_len() floats, row-major.
   * @param num_cells number of cells.
   * @param cell_ids `num_cells` ids, or empty for 0, 1, ..., num_cells-1.
   */
  Result classify_features(span<const float> features, std::size_t num_cells,
                           span<const std::uint64_t> cell_ids = {}) const {
    if (!cell_ids.empty() && cell_ids.size() != num_cells) {
      detail::fail(AMLMIL_STATUS_INVALID_ARGUMENT, "invalid argument `cell_ids`: " +
                                                       std::to_string(cell_ids.size()) + " ids given for " +
                                                       std::to_string(num_cells) + " cells");
    }
    amlmil_result* out = nullptr;
    detail::check(amlmil_session_classify_features(ptr_, features.data(), features.size(), num_cells,
                                                   cell_ids.empty() ? nullptr : cell_ids.data(), &out));
    return Result(out);
  }

  /** @brief Writes each cell's pooled features (N × feature_dim(), row-major) into @p out. */
  void embed(const Bag& bag, span<float> out, const ProgressFn& progress = {}) const;
  /** @brief Each cell's pooled features (N × feature_dim(), row-major). */
  std::vector<float> embed(const Bag& bag, const ProgressFn& progress = {}) const;
  /**
   * @brief Writes each cell's encoder feature map (N × feature_map_len(),
   * what classify_features takes) into @p out, for caching.
   */
  void feature_maps(const Bag& bag, span<float> out, const ProgressFn& progress = {}) const;
  /** @brief Each cell's encoder feature map (N × feature_map_len(), row-major). */
  std::vector<float> feature_maps(const Bag& bag, const ProgressFn& progress = {}) const;

  /** @brief Typed model metadata (amlmil_session_model_info). */
  ModelInfo model_info() const {
    amlmil_model_info raw{};
    detail::check(amlmil_session_model_info(ptr_, &raw, sizeof raw));
    ModelInfo m;
    for (std::size_t i = 0; i < raw.num_classes; ++i) m.classes.emplace_back(amlmil_session_class_name(ptr_, i));
    m.input_size = raw.input_size;
    m.feature_dim = raw.feature_dim;
    m.feature_map = {raw.feature_map_channels, raw.feature_map_height, raw.feature_map_width};
    m.pixel_size_um = raw.pixel_size_um;
    m.encoder_architecture = raw.encoder_architecture;
    m.encoder_method = raw.encoder_method;
    m.encoder_sha256 = raw.encoder_sha256;
    m.mil_method = raw.mil_method;
    m.mil_sha256 = raw.mil_sha256;
    m.mil_tool = raw.mil_tool;
    m.device = raw.device;
    m.precision = raw.precision;
    m.num_heads = raw.num_heads;
    return m;
  }

  /** @brief Session details as JSON: device, classes, both manifests. */
  std::string info() const {
    detail::OwnedString json;
    detail::check(amlmil_session_info(ptr_, json.out()));
    return json.str();
  }
  /** @brief Length of a cell's pooled feature vector (512; 0 when empty). */
  std::size_t feature_dim() const noexcept { return amlmil_session_feature_dim(ptr_); }
  /** @brief Floats per cell that classify_features expects (0 when empty). */
  std::size_t feature_map_len() const noexcept { return amlmil_session_feature_map_len(ptr_); }
  /**
   * @brief Cancels the classify/embed calls running on this session now (from
   * any thread); they throw Error with AMLMIL_STATUS_CANCELLED. Later calls run.
   */
  void cancel() const noexcept { amlmil_session_cancel(ptr_); }

 private:
  amlmil_session* ptr_ = nullptr;
  std::shared_ptr<const PreprocessFn> preprocess_;  // the C++ preprocessing the session calls
};

/**
 * @brief The cells of one patient. Cells are identified by caller-chosen ids,
 * unique within the bag; results refer to cells by them.
 */
class Bag {
 public:
  /** @brief An empty bag. */
  Bag() { detail::check(amlmil_bag_new(&ptr_)); }
  Bag(const Bag&) = delete;
  Bag& operator=(const Bag&) = delete;
  /** @brief Moves; @p other is left without a bag (not even an empty one). */
  Bag(Bag&& other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)) {}
  /** @brief Frees this bag and takes @p other's; @p other is left without a bag. */
  Bag& operator=(Bag&& other) noexcept {
    if (this != &other) amlmil_bag_free(std::exchange(ptr_, std::exchange(other.ptr_, nullptr)));
    return *this;
  }
  ~Bag() { amlmil_bag_free(ptr_); }

  /** @brief Whether this object holds a bag. */
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  /** @brief The C handle (NULL when moved from); still owned by this object. */
  amlmil_bag* get() const noexcept { return ptr_; }

  /**
   * @brief Adds a cell from raw 8-bit pixels (copied).
   * @param cell_id caller-chosen id, unique within the bag.
   * @param pixels `height` rows of `width` pixels, `stride` bytes apart.
   * @param width image width in pixels (1..4096).
   * @param height image height in pixels (1..4096).
   * @param stride bytes from one row to the next; at least `width` × channels.
   * @param format channel order.
   */
  Bag& add_pixels(std::uint64_t cell_id, span<const std::uint8_t> pixels, std::uint32_t width,
                  std::uint32_t height, std::size_t stride, PixelFormat format) {
    detail::check(amlmil_bag_add_pixels(ptr_, cell_id, pixels.data(), pixels.size(), width, height, stride,
                                        static_cast<std::uint32_t>(format)));
    return *this;
  }
  /** @brief Adds a cell from encoded TIFF, PNG or JPEG bytes. */
  Bag& add_encoded(std::uint64_t cell_id, span<const std::uint8_t> data) {
    detail::check(amlmil_bag_add_encoded(ptr_, cell_id, data.data(), data.size()));
    return *this;
  }
  /** @brief Adds a cell from an image file (TIFF, PNG or JPEG; UTF-8 path). */
  Bag& add_file(std::uint64_t cell_id, const std::string& path) {
    detail::check(amlmil_bag_add_file(ptr_, cell_id, path.c_str()));
    return *this;
  }
  /**
   * @brief Makes this empty bag stream to @p session: every cell added from now
   * on is encoded on a background worker. The bag keeps the session's model alive.
   */
  Bag& stream(const Session& session) {
    detail::check(amlmil_bag_stream(ptr_, session.get()));
    return *this;
  }
  /** @brief Number of cells (0 when moved from). */
  std::size_t size() const {
    if (ptr_ == nullptr) return 0;
    std::size_t n = 0;
    detail::check(amlmil_bag_len(ptr_, &n));
    return n;
  }
  /** @brief Removes every cell (a streaming bag keeps streaming). */
  Bag& clear() {
    detail::check(amlmil_bag_clear(ptr_));
    return *this;
  }

 private:
  amlmil_bag* ptr_ = nullptr;
};

inline Result Session::classify(const Bag& bag, const ProgressFn& progress) const {
  detail::ProgressBridge bridge(progress);
  amlmil_result* out = nullptr;
  const Status status = amlmil_session_classify(ptr_, bag.get(), bridge.callback(), bridge.user_data(), &out);
  Result result(out);  // freed if the callback's exception is rethrown
  bridge.finish(status);
  return result;
}

inline void Session::embed(const Bag& bag, span<float> out, const ProgressFn& progress) const {
  detail::ProgressBridge bridge(progress);
  bridge.finish(amlmil_session_embed(ptr_, bag.get(), bridge.callback(), bridge.user_data(), out.data(),
                                     out.size()));
}

inline std::vector<float> Session::embed(const Bag& bag, const ProgressFn& progress) const {
  std::vector<float> out(bag.size() * feature_dim());
  embed(bag, span<float>(out), progress);
  return out;
}

inline void Session::feature_maps(const Bag& bag, span<float> out, const ProgressFn& progress) const {
  detail::ProgressBridge bridge(progress);
  bridge.finish(amlmil_session_feature_maps(ptr_, bag.get(), bridge.callback(), bridge.user_data(), out.data(),
                                            out.size()));
}

inline std::vector<float> Session::feature_maps(const Bag& bag, const ProgressFn& progress) const {
  std::vector<float> out(bag.size() * feature_map_len());
  feature_maps(bag, span<float>(out), progress);
  return out;
}

/**
 * @brief One self-contained HTML page of a result for the cytologist
 * (amlmil_result_to_html): subtype, probability bars, top-attention cell tiles
 * per class, the bag sorted by attention, provenance and the research-software warning.
 * @param session the session that classified @p bag.
 * @param bag the classified bag (a plain one: a streaming bag keeps no images).
 * @param result its result.
 * @param name the bag's title on the page.
 * @param top_k tiles per class.
 * @return the page.
 */
inline std::string to_html(const Session& session, const Bag& bag, const Result& result,
                           const std::string& name = "bag", std::uint32_t top_k = 5) {
  detail::OwnedString html;
  detail::check(amlmil_result_to_html(session.get(), bag.get(), result.get(), name.c_str(), top_k, html.out()));
  return html.str();
}

/**
 * @brief Cross-validates the attention-MIL head (amlmil_cross_validate).
 * @param config_json JSON object with `dataset`, `encoder`, `output`, ... (see amlmil.h).
 * @param progress optional; stages "extract", "train", "report"; may cancel.
 * @return the report as JSON.
 */
inline std::string cross_validate(const std::string& config_json, const ProgressFn& progress = {}) {
  detail::ProgressBridge bridge(progress);
  detail::OwnedString report;
  bridge.finish(amlmil_cross_validate(config_json.c_str(), bridge.callback(), bridge.user_data(), report.out()));
  return report.str();
}

/**
 * @brief Trains one attention-MIL head on fold @p fold (amlmil_train_mil).
 * @param config_json the configuration of cross_validate.
 * @param fold the fold to train on.
 * @param progress optional; may cancel.
 * @return the report as JSON.
 */
inline std::string train_mil(const std::string& config_json, std::uint32_t fold, const ProgressFn& progress = {}) {
  detail::ProgressBridge bridge(progress);
  detail::OwnedString report;
  bridge.finish(
      amlmil_train_mil(config_json.c_str(), fold, bridge.callback(), bridge.user_data(), report.out()));
  return report.str();
}

/**
 * @brief Writes a cross-validation's heads as one deployable MIL checkpoint
 * (amlmil_ensemble): sessions loaded with it average the heads' probabilities
 * and per-class attention.
 * @param config_json JSON object with `cv_dir`, `out` and optionally `seeds` (see amlmil.h).
 * @return the report as JSON (heads, the run of each, their scores).
 */
inline std::string ensemble(const std::string& config_json) {
  detail::OwnedString report;
  detail::check(amlmil_ensemble(config_json.c_str(), report.out()));
  return report.str();
}

/**
 * @brief Pre-trains a cell encoder with SimCLR, SwAV, DINO or the supervised
 * baseline (amlmil_pretrain).
 * @param config_json JSON object with `method`, `dataset`, `output`, ... (see amlmil.h).
 * @param progress optional; stages "decode", "pretrain", "pretrain-epoch"; may cancel.
 * @return the report as JSON.
 */
inline std::string pretrain(const std::string& config_json, const ProgressFn& progress = {}) {
  detail::ProgressBridge bridge(progress);
  detail::OwnedString report;
  bridge.finish(amlmil_pretrain(config_json.c_str(), bridge.callback(), bridge.user_data(), report.out()));
  return report.str();
}

/**
 * @brief Runs or resumes the paper's experiment (amlmil_experiment).
 * @param config_json JSON object with `output` (required), `preset`, overrides (see amlmil.h).
 * @param progress optional; stages `experiment/<stage>[/<encoder>]`; may cancel.
 * @return the report as JSON.
 */
inline std::string experiment(const std::string& config_json, const ProgressFn& progress = {}) {
  detail::ProgressBridge bridge(progress);
  detail::OwnedString report;
  bridge.finish(amlmil_experiment(config_json.c_str(), bridge.callback(), bridge.user_data(), report.out()));
  return report.str();
}

/**
 * @brief Encodes every cell of a data set into a feature cache (amlmil_extract_features).
 * @param dataset_dir the data set.
 * @param encoder_path the encoder checkpoint.
 * @param out_dir the feature cache (resumed if it holds this encoder's features).
 * @param flips whether to keep all four flip variants.
 * @param device `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`; empty means `"auto"`.
 * @param progress optional; may cancel.
 * @return the cache manifest as JSON.
 */
inline std::string extract_features(const std::string& dataset_dir, const std::string& encoder_path,
                                    const std::string& out_dir, bool flips, const std::string& device = "auto",
                                    const ProgressFn& progress = {}) {
  detail::ProgressBridge bridge(progress);
  detail::OwnedString manifest;
  bridge.finish(amlmil_extract_features(dataset_dir.c_str(), encoder_path.c_str(), out_dir.c_str(), flips ? 1 : 0,
                                        detail::or_null(device), bridge.callback(), bridge.user_data(),
                                        manifest.out()));
  return manifest.str();
}

/**
 * @brief Writes a synthetic cohort in the data-set layout (amlmil_synth_cohort).
 * @param config_json `"{}"` (or empty) for the default cohort, else overrides (see amlmil.h).
 * @param out_dir must not exist or be empty.
 * @param progress optional; stage "synth". This call cannot be cancelled: the
 *   return value is ignored, and an exception the callback throws is rethrown
 *   when the cohort is written (the callback is not called again).
 * @return the summary as JSON.
 */
inline std::string synth_cohort(const std::string& config_json, const std::string& out_dir,
                                const ProgressFn& progress = {}) {
  detail::ProgressBridge bridge(progress);
  detail::OwnedString summary;
  bridge.finish(amlmil_synth_cohort(detail::or_null(config_json), out_dir.c_str(), bridge.callback(),
                                    bridge.user_data(), summary.out()));
  return summary.str();
}

/**
 * @brief Validates a data-set folder (amlmil_dataset_check).
 * @param dataset_dir the data set.
 * @param skip `true`: list problems in `issues` and go on; `false`: fail on the first.
 * @param check_images also decode every image.
 * @return `{"summary": ..., "issues": [...]}`.
 */
inline std::string dataset_check(const std::string& dataset_dir, bool skip = false, bool check_images = false) {
  detail::OwnedString json;
  detail::check(amlmil_dataset_check(dataset_dir.c_str(), skip ? 1 : 0, check_images ? 1 : 0, json.out()));
  return json.str();
}

/**
 * @brief Converts a PyTorch-trained model to a libamlmil checkpoint (amlmil_import).
 * @param source_path the file to import.
 * @param out_path the checkpoint to write (only when the whole model checks out).
 * @param options_json empty for the defaults, else a JSON object (see amlmil.h).
 * @return what was written, as JSON.
 */
inline std::string import_model(const std::string& source_path, const std::string& out_path,
                                const std::string& options_json = {}) {
  detail::OwnedString report;
  detail::check(
      amlmil_import(source_path.c_str(), out_path.c_str(), detail::or_null(options_json), report.out()));
  return report.str();
}

/**
 * @brief Routes the library's log records at or above @p max_level to @p callback,
 * replacing any earlier one; an empty callback (or LogLevel::off) stops logging.
 * @throws Error AMLMIL_STATUS_UNSUPPORTED if another Rust logger is installed.
 */
inline void set_log_callback(LogFn callback, LogLevel max_level = LogLevel::info) {
  detail::LogState& state = detail::LogState::get();
  const bool on = callback && max_level != LogLevel::off;
  std::shared_ptr<const LogFn> fn = on ? std::make_shared<const LogFn>(std::move(callback)) : nullptr;
  {
    std::lock_guard<std::mutex> guard(state.lock);
    state.fn = fn;
  }
  const Status status = amlmil_set_log_callback(on ? &detail::LogState::trampoline : nullptr, nullptr,
                                                static_cast<std::uint32_t>(on ? max_level : LogLevel::off));
  if (status != AMLMIL_STATUS_OK) {
    std::lock_guard<std::mutex> guard(state.lock);
    state.fn = nullptr;
  }
  detail::check(status);
}

}  // namespace amlmil

#endif  // AMLMIL_HPP
