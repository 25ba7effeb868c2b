// The C++ side of `src/distributed/`: a process group of PyTorch's own c10d
// (TCPStore rendezvous + ProcessGroupGloo) behind a few C functions that take
// and return libtorch tensors as tch hands them over (`at::Tensor*`).
//
// Nothing here moves bytes itself: every collective is c10d's. Errors never
// cross the boundary as exceptions: each function catches, returns a failure
// value and hands a malloc'd message to `*err` (freed by amlmil_c10d_free_error).
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend; // null for a store-only handle
  int rank = 0;
  int world = 1;
  std::chrono::milliseconds timeout{0};
};

void set_error(char** err, const std::string& what) {
  if (err == nullptr) {
    return;
  }
  *err = static_cast<char*>(std::malloc(what.size() + 1));
  if (*err != nullptr) {
    std::memcpy(*err, what.c_str(), what.size() + 1);
  }
}

// The first line of a c10 error (the rest is a C++ backtrace).
std::string message_of(const std::exception& e) {
  if (auto c10 = dynamic_cast<const c10::Error*>(&e)) {
    return c10->what_without_backtrace();
  }
  return e.what();
}

template <typename F, typename R>
R guarded(char** err, R failed, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    set_error(err, message_of(e));
  } catch (...) {
    set_error(err, "unknown C++ exception in c10d");
  }
  return failed;
}

void wait(Group& g, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(g.timeout);
}

void all_reduce_sum(Group& g, at::Tensor& t) {
  TORCH_CHECK(g.backend, "this handle has no process group");
  std::vector<at::Tensor> tensors{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  wait(g, g.backend->allreduce(tensors, opts));
}

at::Tensor all_gather(Group& g, const at::Tensor& t) {
  TORCH_CHECK(g.backend, "this handle has no process group");
  auto input = t.contiguous();
  std::vector<at::Tensor> inputs{input};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < g.world; ++r) {
    outputs[0].push_back(at::empty_like(input));
  }
  wait(g, g.backend->allgather(outputs, inputs, c10d::AllgatherOptions()));
  return at::cat(outputs[0], 0);
}

// all_gather with a gradient: the backward pass sums every rank's gradient of
// the gathered rows (one all-reduce) and keeps this rank's rows, so a loss
// over the gathered tensor trains each rank's inputs as a loss over one
// process's whole batch would. Every rank runs the backward's all-reduce in
// the same order because every rank builds the same graph.
struct GatherFn : public torch::autograd::Function<GatherFn> {
  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const at::Tensor& input,
      int64_t group) {
    auto g = reinterpret_cast<Group*>(group);
    ctx->saved_data["group"] = group;
    ctx->saved_data["rows"] = input.size(0);
    return all_gather(*g, input);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    auto rows = ctx->saved_data["rows"].toInt();
    auto grad = grads[0].contiguous().clone();
    all_reduce_sum(*g, grad);
    return {grad.narrow(0, g->rank * rows, rows), at::Tensor()};
  }
};

} // namespace

extern "C" {

void amlmil_c10d_free_error(char* err) {
  std::free(err);
}

// Joins the group: connects to (rank 0 with `is_server`: hosts) the TCPStore
// at host:port (`agent`: a launcher's store), then builds a Gloo process group over it under `prefix`.
void* amlmil_c10d_new(
    const char* host,
    uint16_t port,
    int rank,
    int world,
    int is_server,
    int agent,
    const char* prefix,
    int64_t timeout_ms,
    char** err) {
  return guarded(err, static_cast<void*>(nullptr), [&]() -> void* {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    // Every rank counts itself in and the host waits for all (as Python's
    // TCPStore(world_size=…, wait_for_workers=True)); a launcher's own store
    // (`agent`) has counted the workers already.
    opts.numWorkers = agent != 0 ? std::nullopt : std::optional<size_t>(world);
    opts.waitWorkers = agent == 0;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    auto backend =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    auto g = new Group();
    g->store = store;
    g->backend = backend;
    g->rank = rank;
    g->world = world;
    g->timeout = timeout;
    return g;
  });
}

// A second connection to the same store (for a thread of its own).
void* amlmil_c10d_store_clone(void* group, const char* prefix, char** err) {
  return guarded(err, static_cast<void*>(nullptr), [&]() -> void* {
    auto g = static_cast<Group*>(group);
    auto prefixed = c10::static_intrusive_pointer_cast<c10d::PrefixStore>(g->store);
    auto tcp = prefixed->getUnderlyingStore()->clone();
    auto out = new Group();
    out->store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    out->rank = g->rank;
    out->world = g->world;
    out->timeout = g->timeout;
    return out;
  });
}

void amlmil_c10d_free(void* group) {
  delete static_cast<Group*>(group);
}

int amlmil_c10d_all_reduce_sum(void* group, void* tensor, char** err) {
  return guarded(err, -1, [&]() {
    all_reduce_sum(*static_cast<Group*>(group), *static_cast<at::Tensor*>(tensor));
    return 0;
  });
}

// The tensors of every rank (equal shapes) concatenated along dim 0, as a new
// tensor; with `differentiable`, gradients flow back to each rank's input.
void* amlmil_c10d_all_gather(void* group, void* tensor, int differentiable, char** err) {
  return guarded(err, static_cast<void*>(nullptr), [&]() -> void* {
    auto g = static_cast<Group*>(group);
    const auto& t = *static_cast<at::Tensor*>(tensor);
    if (differentiable != 0) {
      return new at::Tensor(GatherFn::apply(t, reinterpret_cast<int64_t>(g)));
    }
    return new at::Tensor(all_gather(*g, t));
  });
}

int amlmil_c10d_broadcast(void* group, void* tensor, int root, char** err) {
  return guarded(err, -1, [&]() {
    auto g = static_cast<Group*>(group);
    TORCH_CHECK(g->backend, "this handle has no process group");
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(*g, g->backend->broadcast(tensors, opts));
    return 0;
  });
}

int amlmil_c10d_barrier(void* group, char** err) {
  return guarded(err, -1, [&]() {
    auto g = static_cast<Group*>(group);
    TORCH_CHECK(g->backend, "this handle has no process group");
    wait(*g, g->backend->barrier(c10d::BarrierOptions()));
    return 0;
  });
}

// Adds `value` to the integer at `key` in the store and returns the sum
// (`value` 0 reads it); -1 with `*err` set when the store cannot be reached.
int64_t amlmil_c10d_store_add(void* group, const char* key, int64_t value, char** err) {
  return guarded(err, static_cast<int64_t>(-1), [&]() {
    return static_cast<Group*>(group)->store->add(std::string(key), value);
  });
}

} // extern "C"
