// The VAE: an MLP encoder to one linear head [mu | logvar], reparameterization, an MLP decoder to
// logits (Bernoulli) or means (Gaussian). Parameters and gradients live in two flat buffers with
// identical offsets; each tensor is a named view (PyTorch names, weights stored [out, in]).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/backend.h"

namespace elbo {

struct ModelSpec {
  int input_dim = 0;              // D: features per sample
  std::vector<int> encoder;       // hidden widths, x -> h
  int latent = 0;                 // L
  std::vector<int> decoder;       // hidden widths, z -> ...
  Activation activation = Activation::Relu;
  Likelihood likelihood = Likelihood::Bernoulli;
};

// One named tensor inside the flat buffer. Biases have cols == 1 and shape [rows].
struct TensorView {
  std::string name;
  int rows = 0, cols = 1;
  bool is_bias = false;
  size_t offset = 0;
  size_t size() const { return static_cast<size_t>(rows) * static_cast<size_t>(cols); }
};

// A linear layer y = x W^T + b, with W [out, in] at w_offset and b [out] at b_offset.
struct LinearLayer {
  int in = 0, out = 0;
  size_t w_offset = 0, b_offset = 0;
  Activation activation = Activation::None;
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

 private:
  void add_linear(const std::string& prefix, int in, int out, Activation a);
  std::vector<TensorView> tensors_;
  std::vector<LinearLayer> layers_;
  size_t num_encoder_ = 0;
  size_t total_ = 0;
};

// Host values of a fresh model, as PyTorch's nn.Linear default initialisation: weights and biases
// uniform in +-1/sqrt(fan_in), drawn from Philox with counter (element, tensor id).
std::vector<float> initial_parameters(const ParameterLayout& layout, uint64_t seed);

// Sums over a batch, in nats.
struct LossSums {
  double recon = 0.0, kl = 0.0;
};

class Vae {
 public:
  // Parameters start from initial_parameters(layout(), seed).
  Vae(Backend& backend, const ModelSpec& spec, int max_batch, uint64_t seed);

  const ParameterLayout& layout() const { return layout_; }
  float* params() { return params_.data(); }  // [P]
  float* grads() { return grads_.data(); }    // [P], same offsets as params
  size_t num_params() const { return layout_.total_size(); }

  // Forward pass on x [B, D] with noise eps [B, L]; fills per-sample recon and KL.
  void forward(const float* x, const float* eps, int B);
  // forward(), then the gradient of grad_scale * sum_b (recon_b + beta KL_b) into grads()
  // (every element overwritten; nothing accumulates across calls).
  void forward_backward(const float* x, const float* eps, int B, float beta, float grad_scale);
  // Sums of the per-sample terms of the last forward (a host synchronisation on devices).
  LossSums loss_sums(int B);

  const float* recon_per_sample() const { return recon_.data(); }  // [B]
  const float* kl_per_sample() const { return kl_.data(); }        // [B]
  const float* output() const { return acts_.back().data(); }      // [B, D] logits or means
  const float* posterior() const { return head_.data(); }          // [B, 2L] [mu | logvar]

  // The decoder alone on latents z [B, L] (backend memory): output() becomes its logits or means.
  // Drawing from the prior or along a path between latents needs no encoder pass.
  void decode(const float* z, int B);

 private:
  const float* layer_input(size_t i, const float* x) const;
  // Forward pass; when dout is given the loss pass also writes grad_scale * d(recon)/d(output).
  void run_forward(const float* x, const float* eps, int B, float* dout, float grad_scale);

  Backend& backend_;
  ModelSpec spec_;
  ParameterLayout layout_;
  int max_batch_;
  DeviceArray params_, grads_;
  std::vector<DeviceArray> acts_;   // output of each layer except the head, [B, out]
  std::vector<DeviceArray> dacts_;  // gradient w.r.t. each layer's output
  DeviceArray head_, dhead_, z_, dz_, recon_, kl_;
};

}  // namespace elbo
