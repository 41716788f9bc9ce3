// The VAE: an encoder (MLP, or Conv2d layers then dense layers) to one linear head [mu | logvar],
// reparameterization, a decoder mirroring it (dense layers, then for conv ConvTranspose2d layers)
// to logits (Bernoulli), means (Gaussian) or means and log-variances (GaussianLearned). Parameters
// and gradients live in two flat buffers with identical offsets; each tensor is a named view
// (PyTorch names and layouts: [out, in] weights, [out_c, in_c, k, k] Conv2d and [in_c, out_c, k, k]
// ConvTranspose2d weights).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.h"

namespace elbo {

enum class ModelType { Mlp, Conv };

struct ConvSpec {
  std::vector<int> channels{32, 64};  // output channels of each encoder Conv2d
  int kernel = 4, stride = 2, padding = 1;
};

struct ModelSpec {
  ModelType type = ModelType::Mlp;
  int input_dim = 0;                        // D: features per sample (C H W for conv)
  int channels = 1, height = 1, width = 1;  // conv: a sample's shape [C, H, W]
  ConvSpec conv;
  std::vector<int> encoder;       // hidden widths, x -> h (conv: after the flattened convs)
  int latent = 0;                 // L
  std::vector<int> decoder;       // hidden widths, z -> ...
  Activation activation = Activation::Relu;
  Likelihood likelihood = Likelihood::Bernoulli;
};

// Outputs of the decoder per sample: D, or 2D for GaussianLearned.
int output_dim(const ModelSpec& spec);

// Why a conv spec's sizes cannot be built ("encoder.conv.1: kernel 4 is larger than the padded
// input 3x3"), or empty when they can.
std::string conv_geometry_error(const ModelSpec& spec);

// One named tensor inside the flat buffer. Biases have cols == 1 and shape [rows]; convolution
// weights (kernel > 0) are [rows, cols / k^2, k, k].
struct TensorView {
  std::string name;
  int rows = 0, cols = 1;
  bool is_bias = false;
  size_t offset = 0;
  int kernel = 0;
  size_t size() const { return static_cast<size_t>(rows) * static_cast<size_t>(cols); }
  std::vector<int64_t> shape() const;
};

// A linear layer y = x W^T + b, with W [out, in] at w_offset and b [out] at b_offset.
struct LinearLayer {
  int in = 0, out = 0;
  size_t w_offset = 0, b_offset = 0;
  Activation activation = Activation::None;
};

// A Conv2d (image -> grid, `maps` output channels, weight [maps, C k k]) or a ConvTranspose2d
// (grid of `maps` channels -> image, weight [maps, C k k]); see ConvShape.
struct ConvLayer {
  ConvShape shape;
  int maps = 0;
  bool transposed = false;
  size_t w_offset = 0, b_offset = 0;
  Activation activation = Activation::None;
  size_t input_size() const {
    return static_cast<size_t>(transposed ? maps * shape.grid() : shape.channels * shape.image());
  }
  size_t output_size() const {
    return static_cast<size_t>(transposed ? shape.channels * shape.image() : maps * shape.grid());
  }
};

class ParameterLayout {
 public:
  explicit ParameterLayout(const ModelSpec& spec);
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  size_t total_size() const { return total_; }
  // Encoder hidden layers, then the head, then decoder hidden layers, then the output layer.
  const std::vector<LinearLayer>& layers() const { return layers_; }
  size_t num_encoder_layers() const { return num_encoder_; }  // including the head
  // Conv models: the encoder's Conv2d layers before the dense layers, and the decoder's
  // ConvTranspose2d layers after them (the last one gives the output).
  const std::vector<ConvLayer>& encoder_convs() const { return encoder_convs_; }
  const std::vector<ConvLayer>& decoder_convs() const { return decoder_convs_; }
  // The shape of one sample the model takes: [D], or [C, H, W] for conv.
  const std::vector<int64_t>& sample_shape() const { return sample_shape_; }

 private:
  void add_linear(const std::string& prefix, int in, int out, Activation a);
  ConvLayer add_conv(const std::string& prefix, const ConvShape& shape, int maps, bool transposed,
                     Activation a);
  std::vector<TensorView> tensors_;
  std::vector<LinearLayer> layers_;
  std::vector<ConvLayer> encoder_convs_, decoder_convs_;
  std::vector<int64_t> sample_shape_;
  size_t num_encoder_ = 0;
  size_t total_ = 0;
};

// Host values of a fresh model, as PyTorch's default initialisation of nn.Linear, nn.Conv2d and
// nn.ConvTranspose2d: weights and biases uniform in +-1/sqrt(fan_in), fan_in being the weight's
// second dimension times k^2 (for ConvTranspose2d its out_channels, as PyTorch computes it), drawn
// from Philox with counter (element, tensor id).
std::vector<float> initial_parameters(const ParameterLayout& layout, uint64_t seed);

// Sums over a batch, in nats.
struct LossSums {
  double recon = 0.0, kl = 0.0;
};

// Where a Vae keeps its parameters and gradients: its own backend memory (the default), or two
// buffers of num_params() floats that the caller owns and keeps alive (node-shared memory, which
// the ranks on a node read the parameters from), written with the initial parameters only when
// write_initial (one rank writes them for all).
struct ParameterStorage {
  float* params = nullptr;
  float* grads = nullptr;
  bool write_initial = true;
};

class Vae {
 public:
  // Parameters start from initial_parameters(layout(), seed).
  Vae(Backend& backend, const ModelSpec& spec, int max_batch, uint64_t seed,
      ParameterStorage storage = {});

  const ParameterLayout& layout() const { return layout_; }
  float* params() { return params_.data(); }  // [P]
  float* grads() { return grads_.data(); }    // [P], same offsets as params
  size_t num_params() const { return layout_.total_size(); }

  // Forward pass on x [B, D] (conv: [B, C, H, W]) with noise eps [B, L]; fills per-sample recon
  // and KL.
  void forward(const float* x, const float* eps, int B);
  // forward() again on the x of the last forward(), with new noise: the encoder's [mu | logvar]
  // is reused, and only the reparameterization, the decoder and the loss run (importance sampling
  // draws thousands of z per x). The figures are those forward(x, eps, B) would give.
  void resample(const float* x, const float* eps, int B);
  // forward(), then the gradient of grad_scale * sum_b (recon_b + beta KL_b) into grads()
  // (every element overwritten; nothing accumulates across calls). after_forward, when given,
  // runs between the two passes (`elbo bench` times them apart). grads_ready, when given, is
  // called after each layer's gradients are written (enqueued, on a device) with an offset from
  // which every gradient to the end of grads() is final; the offsets fall to 0 at the last call
  // (the trainer starts the all-reduce of each finished bucket under the rest of the pass).
  void forward_backward(const float* x, const float* eps, int B, float beta, float grad_scale,
                        const std::function<void()>& after_forward = {},
                        const std::function<void(size_t)>& grads_ready = {});
  // Sums of the per-sample terms of the last forward (a host synchronisation on devices).
  LossSums loss_sums(int B);

  const float* recon_per_sample() const { return recon_.data(); }  // [B]
  const float* kl_per_sample() const { return kl_.data(); }        // [B]
  // [B, D] logits or means; GaussianLearned: [B, 2D], each row D means then D log-variances
  // (images and samples show the means: the first D of each row of output_dim()).
  const float* output() const;
  int output_dim() const { return elbo::output_dim(spec_); }
  const float* posterior() const { return head_.data(); }          // [B, 2L] [mu | logvar]

  // The decoder alone on latents z [B, L] (backend memory): output() becomes its logits or means
  // (and log-variances). Drawing from the prior or along a path between latents needs no encoder.
  void decode(const float* z, int B);

 private:
  const float* layer_input(size_t i, const float* x) const;
  // Samples per group for a conv layer's GEMMs (Backend::conv_col_floats).
  int chunk_samples(const ConvLayer& l) const;
  void conv_forward(const ConvLayer& l, const float* in, float* y, int B);
  // Gradients of one conv layer's parameters from dy (turned into the pre-activation gradient in
  // place), and when din is not null the gradient with respect to its input.
  void conv_backward(const ConvLayer& l, const float* in, const float* y, float* dy, float* din,
                     int B);
  // Forward pass; with_grad: the loss pass also writes grad_scale * d(recon)/d(output);
  // reuse_posterior: start from the head of the last pass (resample).
  void run_forward(const float* x, const float* eps, int B, bool with_grad, float grad_scale,
                   bool reuse_posterior = false);

  Backend& backend_;
  ModelSpec spec_;
  ParameterLayout layout_;
  int max_batch_;
  DeviceArray params_, grads_;
  std::vector<DeviceArray> acts_;   // output of each layer except the head, [B, out]
  std::vector<DeviceArray> dacts_;  // gradient w.r.t. each layer's output
  DeviceArray head_, dhead_, z_, dz_, recon_, kl_;
  // Conv models: each conv layer's output and gradient, and the GEMMs' workspace, sized once
  // for max_batch: col [C k k, B grid] and the transposed side [maps, B grid].
  std::vector<DeviceArray> enc_acts_, enc_dacts_, dec_acts_, dec_dacts_;
  DeviceArray col_, maps_;
};

}  // namespace elbo
