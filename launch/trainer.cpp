// The training loop of one rank. It reads like the textbook loop: next batch -> forward and
// backward -> all-reduce -> optimizer step -> metrics and checkpoints.
#include "launch/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/optimizer.h"
#include "io/batch_loader.h"
#include "io/sampler.h"
#include "launch/epoch_images.h"
#include "launch/report.h"
#include "launch/stop_signal.h"

namespace elbo {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Dynamic binarization: each pixel becomes 1 with probability equal to its grey value, with the
// random number keyed by (sample, epoch, feature) so that it does not depend on the rank.
void binarize_rows(float* x, std::span<const uint32_t> ids, int64_t D, RngKey key, uint32_t epoch) {
  for (size_t b = 0; b < ids.size(); ++b) {
    float* row = x + b * static_cast<size_t>(D);
    for (int64_t j0 = 0; j0 < D; j0 += 4) {
      const Philox4 d =
          philox_draw(key, static_cast<uint32_t>(j0 >> 2), ids[b], epoch, RngStream::Binarize);
      for (int64_t k = 0; k < 4 && j0 + k < D; ++k)
        row[j0 + k] = uniform_open01(d.v[k]) < row[j0 + k] ? 1.0f : 0.0f;
    }
  }
}

std::string format_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Rank r's part of a global batch of B rows: B / W rows, one more for the first B % W ranks.
struct Share {
  int count;
  int64_t offset;
};
Share share(int B, int rank, int world) {
  const int base = B / world, extra = B % world;
  return Share{base + (rank < extra ? 1 : 0), static_cast<int64_t>(rank) * base + std::min(rank, extra)};
}

struct Sums {  // [recon, kl, objective, count]: one small buffer for one all-reduce
  double v[4] = {0, 0, 0, 0};
  void add(const LossSums& s, double beta, int B) {
    v[0] += s.recon;
    v[1] += s.kl;
    v[2] += s.recon + beta * s.kl;
    v[3] += B;
  }
  double per_sample(int i) const { return v[3] > 0 ? v[i] / v[3] : 0.0; }
};

// distributed.shared_memory's buffers for a model of this spec (Communicator::share_memory): a
// collective, asked for only with more than one rank on the CPU.
Communicator::SharedBuffers shared_buffers(const Config& cfg, Communicator& comm, Backend& backend,
                                           const ModelSpec& spec) {
  if (!cfg.distributed.shared_memory || comm.size() == 1 || !backend.is_host()) return {};
  return comm.share_memory(ParameterLayout(spec).total_size());
}

class StepLoop final : public Trainer {
 public:
  StepLoop(const Config& cfg, Communicator& comm, Backend& backend, const ShardedDataset& train,
          const ShardedDataset* test)
      : cfg_(cfg), comm_(comm), be_(backend), train_(train), test_(test),
        D_(train.features()), global_batch_(cfg.train.batch_size),
        batch_(share(global_batch_, comm.rank(), comm.size()).count),
        batch_offset_(share(global_batch_, comm.rank(), comm.size()).offset),
        shm_(shared_buffers(cfg, comm, backend,
                            model_spec(cfg, train.sample_shape(), cfg.data.train))),
        vae_(backend, model_spec(cfg, train.sample_shape(), cfg.data.train), batch_, cfg.seed,
             shm_.params ? ParameterStorage{shm_.params,
                                            shm_.grads[static_cast<size_t>(comm.rank())],
                                            comm.rank() == 0}
                         : ParameterStorage{}),
        sharded_((cfg.distributed.shard_optimizer || shm_.params) && comm.size() > 1),
        slice_(sharded_ ? slice_of(vae_.num_params(), comm.rank(), comm.size())
                        : Slice{0, vae_.num_params()}),
        adam_(backend, slice_.count, adam_config(cfg)),
        compressed_(cfg.distributed.grad_compression == GradCompression::Bf16 && comm.size() > 1 &&
                    !shm_.params),
        grads_bf16_(backend, compressed_ ? (vae_.num_params() + 1) / 2 : 0),
        buckets_(comm.size() > 1 && !sharded_
                     ? gradient_buckets(vae_.layout(), cfg.distributed.bucket_mb)
                     : std::vector<Slice>{}),
        key_(rng_key(cfg.seed)),
        x_{DeviceArray(backend, static_cast<size_t>(batch_) * static_cast<size_t>(D_)),
           DeviceArray(backend, static_cast<size_t>(batch_) * static_cast<size_t>(D_))},
        x_eval_(backend, static_cast<size_t>(batch_) * static_cast<size_t>(D_)),
        eps_(backend, static_cast<size_t>(batch_) * cfg.model.latent), health_(backend, 5) {
    be_.fill_zero(health_.data(), 5);
    for (float* g : shm_.grads) slice_grads_.push_back(g + slice_.offset);
  }

  size_t num_params() const override { return vae_.num_params(); }
  Slice optimizer_slice() const override { return slice_; }
  const char* gradient_path() const override {
    if (comm_.size() == 1) return "single";
    if (shm_.params) return "shared_memory";
    if (sharded_) return "zero1";
    return buckets_.empty() ? "allreduce" : "buckets";
  }
  const ParameterLayout& layout() const override { return vae_.layout(); }

  // Continues from a checkpoint that rank 0 read (others pass nothing): rank 0 sends the training
  // position, the parameters and the Adam moments to every rank.
  void restore(const CheckpointData* ck) override {
    // step, samples seen, completed epochs, Adam steps, and 1 when rank 0 has a checkpoint
    double position[5] = {0, 0, 0, 0, 0};
    if (ck) {
      position[4] = 1;
      position[0] = static_cast<double>(ck->state.step);
      position[1] = static_cast<double>(ck->state.samples_seen);
      position[2] = static_cast<double>(ck->state.epoch);
      position[3] = static_cast<double>(ck->optimizer_steps);
      be_.upload(vae_.params(), ck->params.data(), ck->params.size());
    }
    comm_.allreduce_sum(position, 5);  // only rank 0 contributes
    step_ = static_cast<int64_t>(position[0]);
    samples_seen_ = static_cast<int64_t>(position[1]);
    epochs_done_ = static_cast<int64_t>(position[2]);
    adam_.set_steps_taken(static_cast<int64_t>(position[3]));
    // Every rank takes its slice of the moments (all of them without ZeRO-1), whatever the world
    // size that wrote the checkpoint: checkpoints hold the whole vectors. A fresh run keeps the
    // zeros Adam starts from.
    if (position[4] > 0) {
      scatter_moments(adam_.exp_avg(), ck ? ck->exp_avg.data() : nullptr);
      scatter_moments(adam_.exp_avg_sq(), ck ? ck->exp_avg_sq.data() : nullptr);
    }
    last_saved_step_ = step_;
    health_since_ = step_;
  }

  void run(const CheckpointDirectory& checkpoints, MetricsWriter& metrics) override {
    const int64_t steps_per_epoch = train_.size() / global_batch_;  // the tail is dropped
    share_parameters();
    if (comm_.rank() == 0) {
      std::printf("elbo: %zu parameters, %lld training samples, %lld steps per epoch\n",
                  vae_.num_params(), static_cast<long long>(train_.size()),
                  static_cast<long long>(steps_per_epoch));
      if (step_ > 0) std::printf("elbo: resuming at step %lld\n", static_cast<long long>(step_));
      print_distribution();
      start_pictures();
    }
    run_t0_ = Clock::now();
    run_first_step_ = step_;
    for (int64_t epoch = step_ / steps_per_epoch + 1; epoch <= cfg_.train.epochs && !done();
         ++epoch) {
      const auto t0 = Clock::now();
      const int64_t first = step_ - (epoch - 1) * steps_per_epoch;  // > 0 when resuming mid-epoch
      const Sums train_sums = train_epoch(epoch, first, steps_per_epoch, checkpoints, metrics);
      if (stopping_) break;
      const double epoch_s = seconds_since(t0);
      const Sums test_sums = test_ ? evaluate(*test_) : Sums{};
      // An epoch cut short by train.max_steps is recorded, marked incomplete.
      write_epoch_record(epoch, step_ == epoch * steps_per_epoch, train_sums, test_sums, epoch_s,
                         metrics);
      if (comm_.rank() == 0) draw_pictures(epoch);
      save_checkpoint(checkpoints);
    }
    save_checkpoint(checkpoints);  // the end, unless that step is saved already
    if (comm_.rank() == 0 && terminal_) std::printf("\r\033[K");  // a progress line left over
    // The report of the run as it ends: a stop mid-epoch, or a resume that trimmed the metrics.
    if (comm_.rank() == 0) write_report(cfg_.output.dir, to_yaml(cfg_));
    if (stopping_ && comm_.rank() == 0)
      std::printf("elbo: stopped by signal at step %lld; checkpoint %s\n",
                  static_cast<long long>(step_),
                  step_ > 0 ? checkpoints.path_for_step(step_).c_str() : "none (no step taken)");
  }

  double run_steps(int64_t steps, StepTimer* timer) override {
    if (!shared_) share_parameters();
    const int64_t steps_per_epoch = train_.size() / global_batch_;
    set_timer(timer);
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < steps && !stopping_; ++i) {
      if (timer_) timer_->start_step();  // all of the step, the loop's own work included
      if (!bench_loader_ || bench_step_ == steps_per_epoch) {
        // The loader reads the permutation: it goes first.
        bench_loader_.reset();
        bench_perm_ = epoch_permutation(cfg_.seed, ++bench_epoch_, train_.size());
        bench_step_ = 0;
        bench_loader_ = std::make_unique<BatchLoader>(0, steps_per_epoch, [this](int64_t s,
                                                                                HostBatch& batch) {
          fill_host_batch(train_, {bench_perm_.data() + s * global_batch_ + batch_offset_,
                                   static_cast<size_t>(batch_)},
                          static_cast<uint32_t>(bench_epoch_), batch);
        });
      }
      if (stop_agreed()) {  // as training asks every step on a host: its collective counts too
        stopping_ = true;
        break;
      }
      phase_begin(Phase::DataWait);
      const HostBatch& batch = bench_loader_->next();
      phase_end(Phase::DataWait);
      phase_begin(Phase::Input);
      const float* x = upload_batch(batch, static_cast<uint32_t>(bench_epoch_), RngStream::Noise,
                                    true);
      phase_end(Phase::Input);
      run_step(x, kl_weight());
      ++step_;
      ++bench_step_;
      samples_seen_ += cfg_.train.batch_size;
      if (be_.is_host()) read_health({});
      if (timer_) timer_->end_step();
    }
    if (!be_.is_host()) read_health({});  // waits for the device
    const double seconds = seconds_since(t0);
    set_timer(nullptr);
    return seconds;
  }

 private:
  // Every rank starts from rank 0's parameters (fresh ones agree already, being drawn from the
  // seed; the broadcast makes it so whatever a rank's library versions do). In node-shared
  // memory they are rank 0's already, once the others may read them.
  void share_parameters() {
    if (shm_.params) comm_.shared_fence();
    else comm_.broadcast(vae_.params(), vae_.num_params(), 0);
    shared_ = true;
  }

  // Rank 0 says how the gradients travel, when there is more than one way.
  void print_distribution() const {
    const DistributedConfig& d = cfg_.distributed;
    if (comm_.size() == 1) return;
    if (shm_.params) {
      std::printf("elbo: parameters and gradients in memory shared by the %d ranks of this node\n",
                  comm_.size());
      if (d.bucket_mb > 0 || d.grad_compression != GradCompression::None)
        std::printf("elbo: note: distributed.bucket_mb and grad_compression have no effect with "
                    "distributed.shared_memory, which copies no gradient\n");
      return;
    }
    if (d.shared_memory)
      std::printf("elbo: note: distributed.shared_memory needs every rank on the CPU of one node, "
                  "and room in its shared memory (/dev/shm); the gradients go through %s instead\n",
                  sharded_ ? "a reduce-scatter" : "an all-reduce");
    if (!buckets_.empty())
      std::printf("elbo: gradients all-reduced in %zu buckets under the backward pass\n",
                  buckets_.size());
    else if (d.bucket_mb > 0 && sharded_)
      std::printf("elbo: note: distributed.bucket_mb has no effect with "
                  "distributed.shard_optimizer, whose reduce-scatter follows the backward pass\n");
  }

  // Phase boundaries cost a null check without a timer (training).
  void phase_begin(Phase p) {
    if (timer_) timer_->begin(p);
  }
  void phase_end(Phase p) {
    if (timer_) timer_->end(p);
  }
  void set_timer(StepTimer* timer) {
    timer_ = timer;
    between_passes_ = nullptr;
    if (timer)
      between_passes_ = [timer] {
        timer->end(Phase::Forward);
        timer->begin(Phase::Backward);
      };
  }

  bool done() const {
    return stopping_ || (cfg_.train.max_steps > 0 && step_ >= cfg_.train.max_steps);
  }

  // A signal may reach one rank only; every rank must stop at the same step. On a device the
  // ranks agree only at some steps (stop_check_due), so a stop takes effect at the next of them.
  bool stop_agreed() {
    if (!stop_check_due(be_.is_host(), step_, cfg_.output.log_every)) return false;
    double flag = stop_requested() ? 1.0 : 0.0;
    if (comm_.size() > 1) comm_.allreduce_sum(&flag, 1);
    return flag > 0.0;
  }

  void write_epoch_record(int64_t epoch, bool complete, const Sums& train_sums,
                          const Sums& test_sums, double epoch_s, MetricsWriter& metrics) {
    JsonLine rec;
    rec.add("type", std::string("epoch")).add("epoch", epoch).add("step", step_)
        .add("complete", complete ? 1 : 0)
        .add("train_loss", train_sums.per_sample(2)).add("train_recon", train_sums.per_sample(0))
        .add("train_kl", train_sums.per_sample(1));
    if (test_)
      rec.add("test_neg_elbo", test_sums.per_sample(0) + test_sums.per_sample(1))
          .add("test_recon", test_sums.per_sample(0)).add("test_kl", test_sums.per_sample(1));
    rec.add("samples_per_s", train_sums.v[3] / epoch_s).add("epoch_s", epoch_s);
    metrics.write(rec);
    if (comm_.rank() != 0) return;
    if (terminal_) std::printf("\r\033[K");  // the progress line gives way to the record
    std::printf("epoch %lld  train_loss %.3f", static_cast<long long>(epoch), train_sums.per_sample(2));
    if (test_) std::printf("  test_neg_elbo %.3f", test_sums.per_sample(0) + test_sums.per_sample(1));
    std::printf("  %.0f samples/s  %.2f s\n", train_sums.v[3] / epoch_s, epoch_s);
    std::fflush(stdout);
  }

  // ---- what rank 0 shows: the progress line, the epoch-end images and the report ----------------

  // On a terminal one line, redrawn in place at each log point; elsewhere the step records.
  void show_progress(int64_t epoch, int64_t step_in_epoch, int64_t steps, double loss,
                     double samples_per_s) {
    const int64_t total = cfg_.train.max_steps > 0
                              ? std::min<int64_t>(cfg_.train.max_steps, cfg_.train.epochs * steps)
                              : cfg_.train.epochs * steps;
    const double rate = static_cast<double>(step_ - run_first_step_) / seconds_since(run_t0_);
    const double eta = rate > 0 ? static_cast<double>(total - step_) / rate : 0.0;
    std::printf("\r\033[Kepoch %lld  step %lld/%lld  loss %.3f  %.0f samples/s  ETA %lld:%02lld",
                static_cast<long long>(epoch), static_cast<long long>(step_in_epoch),
                static_cast<long long>(steps), loss, samples_per_s,
                static_cast<long long>(eta) / 60, static_cast<long long>(eta) % 60);
    std::fflush(stdout);
  }

  void start_pictures() {
    std::string why;
    const ShardedDataset& fixed = test_ ? *test_ : train_;
    pictures_ = EpochImages::make(be_, vae_,
                                  model_spec(cfg_, train_.sample_shape(), cfg_.data.train), batch_,
                                  fixed, cfg_.seed, &why);
    if (!pictures_) std::printf("elbo: note: no image grids: %s\n", why.c_str());
  }

  // The grids of this epoch, then the report that shows them with the curves so far.
  void draw_pictures(int64_t epoch) {
    const std::filesystem::path dir = cfg_.output.dir;
    if (pictures_) pictures_->write(dir / "images", epoch);
    write_report(dir, to_yaml(cfg_));
  }

  Sums train_epoch(int64_t epoch, int64_t first, int64_t steps,
                   const CheckpointDirectory& checkpoints, MetricsWriter& metrics) {
    const std::vector<int64_t> perm = epoch_permutation(cfg_.seed, epoch, train_.size());
    const uint32_t c2 = static_cast<uint32_t>(epoch);
    BatchLoader loader(first, steps, [&](int64_t s, HostBatch& batch) {
      fill_host_batch(train_, {perm.data() + s * global_batch_ + batch_offset_,
                               static_cast<size_t>(batch_)}, c2, batch);
    });
    Sums epoch_sums, log_sums;
    auto log_t0 = Clock::now();
    for (int64_t s = first; s < steps && !done(); ++s) {
      if (stop_agreed()) {
        stopping_ = true;
        break;
      }
      const float* x = upload_batch(loader.next(), c2, RngStream::Noise, true);
      const double beta = kl_weight();
      run_step(x, beta);
      ++step_;
      samples_seen_ += cfg_.train.batch_size;
      const bool log_now = step_ % cfg_.output.log_every == 0;
      if (log_now || be_.is_host() || step_ == epoch * steps) read_health({&epoch_sums, &log_sums});
      if (log_now) {
        comm_.allreduce_sum(log_sums.v, 4);
        const double dt = seconds_since(log_t0);
        const WaitStats wait = gather_wait(loader.take_wait_seconds());
        metrics.write(JsonLine().add("type", std::string("step")).add("epoch", epoch)
                          .add("step", step_).add("loss", log_sums.per_sample(2))
                          .add("recon", log_sums.per_sample(0)).add("kl", log_sums.per_sample(1))
                          .add("beta", beta).add("samples_per_s", log_sums.v[3] / dt)
                          .add("data_wait_s_max", wait.max).add("data_wait_s_mean", wait.mean)
                          .add("data_wait_slowest_rank", wait.slowest_rank));
        if (comm_.rank() == 0 && terminal_)
          show_progress(epoch, s + 1, steps, log_sums.per_sample(2), log_sums.v[3] / dt);
        else if (comm_.rank() == 0)
          std::printf("step %lld  loss %.3f  recon %.3f  kl %.3f  %.0f samples/s  data wait %.3f s "
                      "(rank %d)\n", static_cast<long long>(step_), log_sums.per_sample(2),
                      log_sums.per_sample(0), log_sums.per_sample(1), log_sums.v[3] / dt, wait.max,
                      wait.slowest_rank);
        log_sums = Sums{};
        log_t0 = Clock::now();
      }
      if (step_ == epoch * steps) epochs_done_ = epoch;  // before a save at this step
      if (cfg_.checkpoint.every_steps > 0 && step_ % cfg_.checkpoint.every_steps == 0)
        save_checkpoint(checkpoints);
    }
    read_health({&epoch_sums, &log_sums});  // a stop or max_steps can end the epoch between reads
    comm_.allreduce_sum(epoch_sums.v, 4);
    return epoch_sums;
  }

  // Reads the loss sums and the gradient flag that the steps since the last read left in backend
  // memory: every step on the CPU, where reading is free, and only at log points and epoch ends
  // on a device, which would otherwise stall each step. A non-finite value stops the run before
  // it can reach a checkpoint, naming the step (or the steps since the last read).
  void read_health(std::initializer_list<Sums*> into) {
    float h[5];
    be_.download(h, health_.data(), 5);
    be_.fill_zero(health_.data(), 5);
    const int64_t first = health_since_ + 1;
    health_since_ = step_;
    if (first > step_) return;
    const std::string when = first == step_ ? "at step " + std::to_string(step_)
                                            : "within steps " + std::to_string(first) + "-" +
                                                  std::to_string(step_);
    if (!std::isfinite(h[0]) || !std::isfinite(h[1]) || !std::isfinite(h[2]))
      throw_internal("loss is not finite " + when + " (recon sum " + format_g(h[0]) + ", kl sum " +
                         format_g(h[1]) + "); stopping before it reaches a checkpoint",
                     __FILE__, __LINE__);
    if (h[4] != 0.0f)
      throw_internal("gradient is not finite " + when + "; stopping before it reaches a checkpoint",
                     __FILE__, __LINE__);
    for (Sums* sums : into)
      for (int i = 0; i < 4; ++i) sums->v[i] += h[i];
  }

  // Forward and backward, the loss sums, the gradient all-reduce, clipping and Adam: run as they
  // are, or, with train.cuda_graphs on a device, captured once per input buffer and replayed.
  void run_step(const float* x, double beta) {
    const auto work = [this, x, beta] {
      phase_begin(Phase::Forward);
      next_bucket_ = 0;
      vae_.forward_backward(x, eps_.data(), batch_, static_cast<float>(beta),
                            1.0f / static_cast<float>(global_batch_), between_passes_,
                            grads_ready_);
      phase_end(Phase::Backward);
      be_.accumulate_losses(vae_.recon_per_sample(), vae_.kl_per_sample(), batch_,
                            static_cast<float>(beta), health_.data());
      if (shm_.params) {
        shared_update();
        return;
      }
      if (sharded_) {
        sharded_update();
        return;
      }
      phase_begin(Phase::AllReduce);
      if (buckets_.empty()) sum_gradients();
      else finish_buckets();
      phase_end(Phase::AllReduce);
      phase_begin(Phase::Optimizer);
      if (cfg_.train.grad_clip > 0)
        clip_grad_norm(be_, vae_.grads(), vae_.num_params(), cfg_.train.grad_clip);
      adam_.step(vae_.params(), vae_.grads(), health_.data() + 4);
      phase_end(Phase::Optimizer);
    };
    if (!graphs_wanted()) {
      work();
      ++plain_steps_;
      return;
    }
    std::unique_ptr<CapturedWork>& graph = graphs_[x == x_[1].data() ? 1 : 0];
    if (!graph) {
      graph = be_.capture(work);
      // The ranks must make their NCCL calls the same way, all from a graph or all eagerly, so
      // they agree after every capture. Capturing ran nothing: a rank that did capture drops its
      // graphs and runs the step eagerly like the rest, and graphs stay off on every rank.
      const int failed = ranks_that_failed_capture(comm_, graph != nullptr);
      if (failed > 0) {
        graphs_[0].reset();
        graphs_[1].reset();
        graphs_failed_ = true;
        if (comm_.rank() == 0) {
          std::string where;
          if (comm_.size() > 1)
            where = " on " + std::to_string(failed) + " of " + std::to_string(comm_.size()) +
                    " ranks";
          std::printf("elbo: note: this step cannot be captured as a CUDA graph%s; running it as "
                      "is, without graphs\n", where.c_str());
        }
        work();
        return;
      }
    }
    graph->replay();
    comm_.replayed();
  }

  // The gradients summed over ranks: all of them, or under ZeRO-1 this rank's slice. Compressed,
  // they cross as bfloat16 and come back as floats (the slice only, under ZeRO-1).
  void sum_gradients() {
    const size_t n = vae_.num_params();
    float* g = vae_.grads();
    if (!compressed_) {
      if (sharded_) comm_.reduce_scatter_sum(g, n);
      else comm_.allreduce_sum(g, n);
      return;
    }
    auto* h = reinterpret_cast<uint16_t*>(grads_bf16_.data());
    be_.to_bfloat16(g, h, n);
    if (sharded_) {
      comm_.reduce_scatter_sum_bf16(h, n);
      be_.from_bfloat16(h + slice_.offset, g + slice_.offset, slice_.count);
    } else {
      comm_.allreduce_sum_bf16(h, n);
      be_.from_bfloat16(h, g, n);
    }
  }

  // Called by the backward pass as layers finish: starts the all-reduce of every bucket whose
  // gradients are all final, then lets the started ones advance. `elbo bench` times these calls
  // as all-reduce and not as backward: on a CPU, MPI moves the data inside them, on the same core,
  // so only what advances between the calls (a NIC's or the kernel's transfers, NCCL on a GPU)
  // is hidden, and the timer counts no overlap it cannot see.
  void start_buckets(size_t ready_from) {
    phase_end(Phase::Backward);
    phase_begin(Phase::AllReduce);
    while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].offset >= ready_from) {
      const Slice& b = buckets_[next_bucket_++];
      if (compressed_) {
        auto* h = reinterpret_cast<uint16_t*>(grads_bf16_.data()) + b.offset;
        be_.to_bfloat16(vae_.grads() + b.offset, h, b.count);
        comm_.start_allreduce_sum_bf16(h, b.count);
      } else {
        comm_.start_allreduce_sum(vae_.grads() + b.offset, b.count);
      }
    }
    comm_.progress();
    phase_end(Phase::AllReduce);
    phase_begin(Phase::Backward);
  }
  // After the backward pass, every bucket has started (the last layer reports offset 0).
  void finish_buckets() {
    ELBO_CHECK(next_bucket_ == buckets_.size(), "a gradient bucket was never started");
    comm_.finish_allreduces();
    if (compressed_) {
      const auto* h = reinterpret_cast<const uint16_t*>(grads_bf16_.data());
      be_.from_bfloat16(h, vae_.grads(), vae_.num_params());
    }
  }

  // ZeRO-1: this rank sums only its slice of the gradients, clips it by the norm of the whole
  // (its square summed over ranks), updates its slice with its own Adam moments, and gathers
  // everyone's slices of the parameters. A non-finite gradient is seen by the rank whose slice
  // holds it; its error ends the job, and the parameters it gathered are not finite everywhere.
  void sharded_update() {
    const size_t n = vae_.num_params();
    float* g = vae_.grads() + slice_.offset;
    phase_begin(Phase::AllReduce);
    sum_gradients();
    phase_end(Phase::AllReduce);
    update_slice(g);
    phase_begin(Phase::AllReduce);
    comm_.allgather(vae_.params(), n);
    phase_end(Phase::AllReduce);
  }

  // Clips this rank's slice g of the summed gradients by the norm of the whole (its square summed
  // over ranks) and updates its slice of the parameters with its own Adam moments.
  void update_slice(float* g) {
    phase_begin(Phase::Optimizer);
    if (cfg_.train.grad_clip > 0) {
      double squares = be_.sum_of_squares(g, slice_.count);
      comm_.allreduce_sum(&squares, 1);
      clip_to_norm(be_, g, slice_.count, std::sqrt(squares), cfg_.train.grad_clip);
    }
    adam_.step(vae_.params() + slice_.offset, g, health_.data() + 4);
    phase_end(Phase::Optimizer);
  }

  // distributed.shared_memory: ZeRO-1 without messages. Once every rank's gradients are written
  // (the first fence), this rank updates its slice of the parameters, which are the node's one
  // copy, from the sum of every rank's slice, read in rank order where each rank wrote it: in
  // Adam's own pass, or with clipping first into this rank's buffer (whose slice no other rank
  // reads) for the norm. After the second fence every rank reads the new parameters, and may
  // overwrite its gradients: nobody reads them any more. `elbo bench` counts the fences as
  // all-reduce and the sums as optimizer.
  void shared_update() {
    phase_begin(Phase::AllReduce);
    comm_.shared_fence();
    phase_end(Phase::AllReduce);
    const int k = static_cast<int>(slice_grads_.size());
    if (cfg_.train.grad_clip > 0) {
      float* g = vae_.grads() + slice_.offset;
      phase_begin(Phase::Optimizer);
      be_.sum_buffers(slice_grads_.data(), k, slice_.count, g);
      phase_end(Phase::Optimizer);
      update_slice(g);
    } else {
      phase_begin(Phase::Optimizer);
      adam_.step_summed(vae_.params() + slice_.offset, slice_grads_.data(), k, health_.data() + 4);
      phase_end(Phase::Optimizer);
    }
    phase_begin(Phase::AllReduce);
    comm_.shared_fence();
    phase_end(Phase::AllReduce);
  }

  // Rank 0's whole moment vector `all` (nullptr elsewhere) to every rank's `mine`: its slice.
  void scatter_moments(float* mine, const float* all) {
    const size_t n = vae_.num_params();
    if (!sharded_) {
      if (all) be_.upload(mine, all, n);
      comm_.broadcast(mine, n, 0);
      return;
    }
    DeviceArray whole(be_, n);
    if (all) be_.upload(whole.data(), all, n);
    comm_.broadcast(whole.data(), n, 0);
    std::vector<float> host(slice_.count);
    be_.download(host.data(), whole.data() + slice_.offset, slice_.count);
    be_.upload(mine, host.data(), slice_.count);
  }

  // Every rank's slice of a moment vector, whole on rank 0 (into `all`, n floats); a collective.
  void gather_moments(const float* mine, std::vector<float>& all) {
    const size_t n = vae_.num_params();
    if (!sharded_) {
      if (comm_.rank() == 0) be_.download(all.data(), mine, n);
      return;
    }
    DeviceArray whole(be_, n);
    std::vector<float> host(slice_.count);
    be_.download(host.data(), mine, slice_.count);
    be_.upload(whole.data() + slice_.offset, host.data(), slice_.count);
    comm_.allgather(whole.data(), n);
    if (comm_.rank() == 0) be_.download(all.data(), whole.data(), n);
  }

  // A graph bakes in its arguments, so only the steady state is captured: after the KL warm-up
  // (beta changes every step until then) and a few plain steps that let cuBLAS and NCCL set up.
  // Clipping reads the gradient norm back to the host, which a graph cannot do.
  bool graphs_wanted() const {
    constexpr int64_t kPlainSteps = 3;
    return cfg_.train.cuda_graphs && !graphs_failed_ && !be_.is_host() && !timer_ &&
           cfg_.train.grad_clip == 0.0 && step_ >= cfg_.train.kl_warmup_steps &&
           plain_steps_ >= kPlainSteps;  // counted in this process: a resumed run warms up too
  }

  // beta, ramped linearly from 0 over the warm-up steps when configured.
  double kl_weight() const {
    const double w = cfg_.train.kl_warmup_steps > 0
                         ? std::min(1.0, static_cast<double>(step_ + 1) /
                                             static_cast<double>(cfg_.train.kl_warmup_steps))
                         : 1.0;
    return cfg_.train.beta * w;
  }

  // Reads rows into a host batch (on the loader thread during training): const, touches no
  // member that the training step writes.
  void fill_host_batch(const ShardedDataset& data, std::span<const int64_t> rows, uint32_t c2,
                       HostBatch& batch) const {
    batch.ids.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) batch.ids[i] = static_cast<uint32_t>(rows[i]);
    batch.x.resize(rows.size() * static_cast<size_t>(D_));
    data.read_rows(rows, batch.x.data());
    if (cfg_.data.binarize == Binarize::Dynamic) binarize_rows(batch.x.data(), batch.ids, D_, key_, c2);
  }

  // Copies a batch to the device and draws its noise from (sample id, c2); returns where the
  // batch now is. Training batches alternate between two device buffers, so that a device copies
  // the next one while still computing on the last (Backend::upload_input).
  const float* upload_batch(const HostBatch& batch, uint32_t c2, RngStream stream, bool training) {
    // Evaluation has a buffer of its own, outside the two that training copies alternate between.
    float* x = training ? x_[++uploads_ & 1].data() : x_eval_.data();
    if (training) be_.upload_input(x, batch.x.data(), batch.x.size());
    else be_.upload(x, batch.x.data(), batch.x.size());
    be_.fill_noise(eps_.data(), batch.ids, cfg_.model.latent, key_, c2, stream);
    return x;
  }

  struct WaitStats {
    double max = 0, mean = 0;
    int slowest_rank = 0;
  };
  // Each rank's seconds waiting for data, one slot per rank in one sum.
  WaitStats gather_wait(double mine) {
    std::vector<double> table(static_cast<size_t>(comm_.size()), 0.0);
    table[static_cast<size_t>(comm_.rank())] = mine;
    comm_.allreduce_sum(table.data(), table.size());
    WaitStats w;
    for (int r = 0; r < comm_.size(); ++r) {
      const double v = table[static_cast<size_t>(r)];
      w.mean += v / comm_.size();
      if (v > w.max) {
        w.max = v;
        w.slowest_rank = r;
      }
    }
    return w;
  }

  // Negative ELBO (beta = 1) over every test sample once, with fixed evaluation noise.
  Sums evaluate(const ShardedDataset& data) {
    Sums sums;
    std::vector<int64_t> rows;
    // Contiguous parts, one per rank, so that every sample is seen exactly once.
    const int64_t first = data.size() * comm_.rank() / comm_.size();
    const int64_t last = data.size() * (comm_.rank() + 1) / comm_.size();
    for (int64_t start = first; start < last; start += batch_) {
      const int64_t n = std::min<int64_t>(batch_, last - start);
      rows.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = start + i;
      fill_host_batch(data, rows, 0, eval_batch_);
      const float* x = upload_batch(eval_batch_, 0, RngStream::EvalNoise, false);
      vae_.forward(x, eps_.data(), static_cast<int>(n));
      sums.add(vae_.loss_sums(static_cast<int>(n)), 1.0, static_cast<int>(n));
    }
    comm_.allreduce_sum(sums.v, 4);
    return sums;
  }

  // Rank 0 writes; a step is saved once. NaN never reaches a checkpoint.
  void save_checkpoint(const CheckpointDirectory& checkpoints) {
    if (step_ == last_saved_step_) return;
    last_saved_step_ = step_;
    const size_t n = vae_.num_params();
    std::vector<float> exp_avg(comm_.rank() == 0 ? n : 0), exp_avg_sq(exp_avg.size());
    gather_moments(adam_.exp_avg(), exp_avg);  // collectives under ZeRO-1: every rank takes part
    gather_moments(adam_.exp_avg_sq(), exp_avg_sq);
    if (comm_.rank() != 0) return;
    if (!be_.all_finite(vae_.params(), n))
      throw_internal("parameters are not finite at step " + std::to_string(step_) +
                         "; checkpoint not written", __FILE__, __LINE__);
    CheckpointData ck;
    ck.state = TrainingState{epochs_done_, step_, samples_seen_, cfg_.seed, comm_.size()};
    ck.config_yaml = to_yaml(cfg_);
    ck.optimizer_name = cfg_.train.optimizer.name;
    ck.optimizer_steps = adam_.steps_taken();
    ck.params.resize(n);
    be_.download(ck.params.data(), vae_.params(), n);
    ck.exp_avg = std::move(exp_avg);
    ck.exp_avg_sq = std::move(exp_avg_sq);
    checkpoints.save(vae_.layout(), std::move(ck));
  }

  const Config& cfg_;
  Communicator& comm_;
  Backend& be_;
  const ShardedDataset& train_;
  const ShardedDataset* test_;
  int64_t D_;
  int global_batch_;
  int batch_;             // this rank's rows per step
  int64_t batch_offset_;  // where they start within the global batch
  // distributed.shared_memory, with more than one CPU rank, all on one node: the parameters and
  // every rank's gradients, in host memory the ranks share (the Vae's own buffers); else none.
  const Communicator::SharedBuffers shm_;
  Vae vae_;
  const bool sharded_;  // ZeRO-1 (shard_optimizer or shared_memory, with more than one rank)
  const Slice slice_;   // the parameters this rank's Adam updates: all of them unless sharded_
  Adam adam_;
  // distributed.grad_compression: bf16, with more than one rank: the bfloat16 gradients, two to
  // a float of backend memory.
  const bool compressed_;
  DeviceArray grads_bf16_;
  // distributed.shared_memory: this rank's slice of every rank's gradients, in rank order.
  std::vector<const float*> slice_grads_;
  // distributed.bucket_mb, with more than one rank and no ZeRO-1: the gradient buffer's buckets,
  // last first (gradient_buckets), each all-reduced as soon as the backward pass has finished it;
  // empty: one all-reduce after the pass.
  const std::vector<Slice> buckets_;
  size_t next_bucket_ = 0;  // the next bucket to start in this step
  // The backward pass's callback: start_buckets, or none without buckets.
  const std::function<void(size_t)> grads_ready_ =
      buckets_.empty() ? std::function<void(size_t)>{}
                       : [this](size_t from) { start_buckets(from); };
  RngKey key_;
  HostBatch eval_batch_;       // staging for evaluation reads
  DeviceArray x_[2];           // [batch, D] each: training batches alternate between them
  DeviceArray x_eval_;         // [batch, D]
  DeviceArray eps_;            // [batch, L]
  uint64_t uploads_ = 0;
  int64_t step_ = 0, samples_seen_ = 0, epochs_done_ = 0;
  int64_t last_saved_step_ = 0;  // a fresh run has nothing worth saving at step 0
  bool stopping_ = false;        // a stop signal reached some rank
  std::unique_ptr<CapturedWork> graphs_[2];  // the captured step, per input buffer
  bool graphs_failed_ = false;  // some rank could not capture: no rank uses graphs any more
  int64_t plain_steps_ = 0;  // steps run without a graph by this process
  DeviceArray health_;           // (5): loss sums [recon, kl, objective, count], gradient flag
  int64_t health_since_ = 0;     // the step health_ was last read at
  // Progress redrawn in place on a terminal. Not under an MPI launcher: Open MPI gives each rank
  // a pseudo-terminal even when mpirun's own output goes to a file, which would then fill with
  // carriage returns and escape codes; plain periodic lines serve a log and a terminal alike.
  const bool terminal_ = ::isatty(STDOUT_FILENO) == 1 && mpi_launcher_world_size() == 0;
  int64_t run_first_step_ = 0;
  Clock::time_point run_t0_;
  std::unique_ptr<EpochImages> pictures_;  // rank 0, when the samples are images
  bool shared_ = false;                    // rank 0's parameters sent to every rank
  // `elbo bench` (run_steps): the phase timer, and the epoch it is in, with its loader.
  StepTimer* timer_ = nullptr;
  std::function<void()> between_passes_;  // ends the forward phase, begins the backward one
  int64_t bench_epoch_ = 0, bench_step_ = 0;
  std::vector<int64_t> bench_perm_;
  std::unique_ptr<BatchLoader> bench_loader_;
};

}  // namespace

std::vector<Slice> gradient_buckets(const ParameterLayout& layout, double bucket_mb) {
  std::vector<Slice> buckets;
  if (bucket_mb <= 0) return buckets;
  std::vector<size_t> starts;
  for (const TensorView& t : layout.tensors()) starts.push_back(t.offset);
  std::sort(starts.begin(), starts.end(), std::greater<>());
  const double cap_floats = bucket_mb * 1e6 / sizeof(float);
  size_t end = layout.total_size();
  for (size_t start : starts) {
    if (start == 0 || static_cast<double>(end - start) >= cap_floats) {
      buckets.push_back(Slice{start, end - start});
      end = start;
    }
  }
  return buckets;
}

bool stop_check_due(bool host_backend, int64_t steps_done, int log_every) {
  return host_backend || steps_done % kStopCheckEvery == 0 ||
         (log_every > 0 && steps_done % log_every == 0);
}

int ranks_that_failed_capture(Communicator& comm, bool captured) {
  double failed = captured ? 0.0 : 1.0;
  if (comm.size() > 1) comm.allreduce_sum(&failed, 1);
  return static_cast<int>(failed);
}

std::unique_ptr<Trainer> make_trainer(const Config& cfg, Communicator& comm, Backend& backend,
                                      const ShardedDataset& train, const ShardedDataset* test) {
  return std::make_unique<StepLoop>(cfg, comm, backend, train, test);
}

}  // namespace elbo
