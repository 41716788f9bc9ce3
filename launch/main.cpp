// The `elbo` executable: subcommands, and the one place where errors become a message and an exit
// code (2 for bad input, 1 for anything else).
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>

#include "core/backend.h"
#include "core/error.h"
#include "launch/bench.h"
#include "launch/error_report.h"
#include "launch/eval.h"
#include "launch/info.h"
#include "launch/prepare.h"
#include "launch/sample.h"
#include "launch/train.h"

namespace {

int fail(const std::string& message, int code) {
  std::fprintf(stderr, "elbo: error: %s\n", message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // The BLAS picked slow generic kernels for a CPU it does not know (see blas_core_to_request):
  // start again, before anything else has run, with the kernels the CPU supports. A user's own
  // OPENBLAS_CORETYPE is always respected, and it is set before the exec, so this happens at most
  // once; the process keeps its pid (mpirun and job schedulers see nothing). Should the exec
  // fail, the run goes on with the library's choice.
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const std::string core = elbo::blas_core_to_request();
    if (!core.empty() && setenv("OPENBLAS_CORETYPE", core.c_str(), 1) == 0)
      execv("/proc/self/exe", argv);
  }
  // Line-buffered even into a file or pipe: a second Ctrl-C ends the process at once (_Exit, the
  // only safe thing in a signal handler), and every line printed before it is then already out.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{"elbo: data-parallel Variational Autoencoder training"};
  app.set_version_flag("--version", "elbo 0.1.0");
  app.require_subcommand(1);

  elbo::TrainOptions train;
  CLI::App* train_cmd = app.add_subcommand("train", "Train a VAE from a YAML config");
  train_cmd->add_option("config", train.config_path, "YAML experiment config")->required();
  train_cmd->add_option("overrides", train.overrides, "key.path=value overrides, e.g. train.epochs=3");
  train_cmd->add_option("--resume", train.resume,
                        "continue a run: 'auto' (the newest checkpoint in output.dir, if any) or a "
                        "checkpoint file (into its own run's directory, or an empty or new one)");
  train_cmd->add_flag("--discard-newer", train.discard_newer,
                      "with --resume PATH: delete the run's checkpoints past PATH's step "
                      "(otherwise such a resume is refused)");

  elbo::PrepareOptions prepare;
  CLI::App* prepare_cmd = app.add_subcommand("prepare", "Write HDF5 shards from IDX files");
  prepare_cmd->add_option("--from", prepare.from, "source format (idx)")->capture_default_str();
  prepare_cmd->add_option("--images", prepare.images, "IDX image file (gzip or raw)")->required();
  prepare_cmd->add_option("--labels", prepare.labels, "IDX label file (optional)");
  prepare_cmd->add_option("--out", prepare.out, "output directory for the shards")->required();
  prepare_cmd->add_option("--shards", prepare.shards, "number of shards")
      ->capture_default_str()->check(CLI::Range(1, 1 << 20));

  std::string info_path;
  bool info_params = false;
  CLI::App* info_cmd = app.add_subcommand("info", "Describe a checkpoint as one JSON line");
  info_cmd->add_option("checkpoint", info_path, "checkpoint file (.h5)")->required();
  info_cmd->add_flag("--params", info_params, "also print every parameter, one tensor per line");

  // eval and encode share the options that choose what is scored and how.
  const auto add_scoring_options = [](CLI::App* cmd, elbo::ScoringOptions& o) {
    cmd->add_option("checkpoint", o.checkpoint, "checkpoint file (.h5)")->required();
    cmd->add_option("--device", o.device,
                    "auto | cpu | cuda (default: the device of the checkpoint's config)");
    cmd->add_option("--batch", o.batch, "samples per forward pass")->capture_default_str();
    cmd->add_option("--threads", o.threads,
                    "BLAS threads per rank on the CPU; figures are the same bits at any number "
                    "of ranks with the same --threads")
        ->capture_default_str();
    cmd->add_option("--seed", o.seed, "seed of the evaluation noise (default: the checkpoint's)");
  };
  elbo::ScoringOptions eval;
  eval.iw_samples = 100;
  bool eval_json = false;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "Negative ELBO and importance-weighted -log p(x) of a checkpoint on a data set");
  add_scoring_options(eval_cmd, eval);
  eval_cmd->add_option("--data", eval.data,
                       "directory (or glob) of HDF5 shards (default: the checkpoint's data.test)");
  eval_cmd->add_option("--iw-samples", eval.iw_samples, "importance samples K per sample")
      ->capture_default_str();
  eval_cmd->add_flag("--json", eval_json, "print one JSON object");

  elbo::EncodeOptions encode;
  CLI::App* encode_cmd = app.add_subcommand(
      "encode", "Posterior mean and log-variance and per-sample scores of a data set, to HDF5");
  add_scoring_options(encode_cmd, encode.scoring);
  encode_cmd->add_option("--data", encode.scoring.data, "directory (or glob) of HDF5 shards")
      ->required();
  encode_cmd->add_option("--out", encode.out, "the latents file to write (.h5)")->required();
  encode_cmd->add_option("--iw-samples", encode.scoring.iw_samples,
                         "also iw_nll, from K importance samples per sample");
  encode_cmd->add_flag("--force", encode.force, "replace an existing --out");

  elbo::SampleOptions sample;
  CLI::App* sample_cmd = app.add_subcommand("sample", "Draw a trained model's samples as a PNG grid");
  sample_cmd->add_option("checkpoint", sample.checkpoint, "checkpoint file (.h5)")->required();
  sample_cmd->add_option("--out", sample.out, "PNG file to write")->required();
  sample_cmd->add_option("--n", sample.n, "number of samples")->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sample_cmd->add_option("--seed", sample.seed, "seed of the prior noise")->capture_default_str();
  sample_cmd->add_option("--data", sample.data,
                         "shards (directory or glob): draw their first N samples above their "
                         "reconstructions; also tells the image shape");
  sample_cmd->add_option("--interpolate", sample.interpolate,
                         "I J: the decoded path between the latents of samples I and J of --data")
      ->expected(2);
  sample_cmd->add_option("--steps", sample.steps, "points on the --interpolate path")
      ->capture_default_str()->check(CLI::Range(2, 256));
  sample_cmd->add_option("--device", sample.device, "auto, cpu or cuda")->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sample_cmd->add_flag("--force", sample.force, "replace an existing --out");

  elbo::BenchOptions bench;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench", "Training-step throughput, its breakdown, memory and machine, as one JSON object "
               "(writes nothing); --allreduce: the all-reduce sweep; --roofline: the step's bound");
  bench_cmd->add_option("config", bench.config_path,
                        "YAML experiment config, as for train (optional with --allreduce)");
  bench_cmd->add_option("overrides", bench.overrides, "key.path=value overrides, as for train");
  bench_cmd->add_option("--warmup-steps", bench.warmup_steps, "untimed steps first")
      ->capture_default_str()->check(CLI::Range(0, 1 << 24));
  bench_cmd->add_option("--windows", bench.windows, "timed windows (samples/s: their median)")
      ->capture_default_str()->check(CLI::Range(1, 1 << 16));
  bench_cmd->add_option("--window-steps", bench.window_steps, "steps per window")
      ->capture_default_str()->check(CLI::Range(1, 1 << 24));
  bench_cmd->add_option("--breakdown-steps", bench.breakdown_steps,
                        "then steps with each phase timed (on a GPU each phase boundary "
                        "synchronises the device)")
      ->capture_default_str()->check(CLI::Range(1, 1 << 24));
  bench_cmd->add_flag("--roofline", bench.roofline,
                      "also this machine's sgemm rate on the step's GEMM shapes, its memory "
                      "bandwidth and the bound they put on the step");
  bench_cmd->add_flag("--allreduce", bench.allreduce,
                      "instead, the all-reduce sweep through the data plane's communicator "
                      "(MPI on CPUs, NCCL on GPUs), nccl-tests' algbw and busbw");
  const CLI::Validator byte_count(elbo::parse_byte_count, "BYTES");
  bench_cmd->add_option("--min-bytes", bench.sweep.min_bytes, "--allreduce: smallest message (K/M/G)")
      ->capture_default_str()->transform(byte_count);
  bench_cmd->add_option("--max-bytes", bench.sweep.max_bytes, "--allreduce: largest message (K/M/G)")
      ->capture_default_str()->transform(byte_count);
  bench_cmd->add_option("--factor", bench.sweep.factor, "--allreduce: size multiplier between rows")
      ->capture_default_str()->check(CLI::Range(2, 1 << 20));
  bench_cmd->add_option("--iters", bench.sweep.iters, "--allreduce: timed calls per size")
      ->capture_default_str()->check(CLI::Range(1, 1 << 30));
  bench_cmd->add_option("--warmup", bench.sweep.warmup, "--allreduce: untimed calls per size first")
      ->capture_default_str()->check(CLI::Range(0, 1 << 30));

  // CLI11 reports an unknown command as a missing one; name it instead.
  const std::string first = argc > 1 ? argv[1] : "";
  std::string commands;
  bool known = false;
  for (const CLI::App* sc : app.get_subcommands([](CLI::App*) { return true; })) {
    known = known || sc->get_name() == first;
    commands += (commands.empty() ? "" : ", ") + sc->get_name();
  }
  if (!first.empty() && first[0] != '-' && !known)
    return fail("unknown command '" + first + "'; commands: " + commands +
                    " (command line; see elbo --help)", 2);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(std::string(e.what()) + " (command line; see elbo --help)", 2);
  }

  try {
    if (*train_cmd) return elbo::run_train(train);
    if (*bench_cmd) return elbo::run_bench(bench);
    if (*prepare_cmd) return elbo::run_prepare(prepare);
    if (*info_cmd) return elbo::run_info(info_path, info_params);
    for (const auto& [cmd, o] : {std::pair{eval_cmd, &eval}, std::pair{encode_cmd, &encode.scoring}})
      if (*cmd && cmd->count("--seed") > 0 && o->seed < 0)
        elbo::throw_bad_input("--seed must not be negative, got " + std::to_string(o->seed) +
                              " (command line)");
    if (*eval_cmd) {
      if (eval.iw_samples <= 0)
        elbo::throw_bad_input("--iw-samples must be positive, got " +
                              std::to_string(eval.iw_samples) + " (command line)");
      return elbo::run_eval(eval, eval_json);
    }
    if (*encode_cmd) {
      if (encode_cmd->count("--iw-samples") > 0 && encode.scoring.iw_samples <= 0)
        elbo::throw_bad_input("--iw-samples must be positive, got " +
                              std::to_string(encode.scoring.iw_samples) + " (command line)");
      return elbo::run_encode(encode);
    }
    if (*sample_cmd) return elbo::run_sample(sample);
  } catch (...) {
    const elbo::ErrorReport report = elbo::report_of(std::current_exception());
    return fail(report.message, report.exit_code);
  }
  return 1;
}
