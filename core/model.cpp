// The VAE's parameter layout, initialisation, and forward/backward passes against a Backend.
#include "core/model.h"

#include <cmath>

#include "core/error.h"

namespace elbo {

ParameterLayout::ParameterLayout(const ModelSpec& spec) {
  ELBO_CHECK(spec.input_dim > 0 && spec.latent > 0, "model needs input and latent sizes");
  int width = spec.input_dim;
  for (size_t i = 0; i < spec.encoder.size(); ++i) {
    add_linear("encoder." + std::to_string(i), width, spec.encoder[i], spec.activation);
    width = spec.encoder[i];
  }
  add_linear("encoder.head", width, 2 * spec.latent, Activation::None);
  num_encoder_ = layers_.size();
  width = spec.latent;
  for (size_t i = 0; i < spec.decoder.size(); ++i) {
    add_linear("decoder." + std::to_string(i), width, spec.decoder[i], spec.activation);
    width = spec.decoder[i];
  }
  add_linear("decoder.out", width, spec.input_dim, Activation::None);
}

void ParameterLayout::add_linear(const std::string& prefix, int in, int out, Activation a) {
  ELBO_CHECK(in > 0 && out > 0, "layer widths must be positive");
  LinearLayer layer{in, out, total_, 0, a};
  tensors_.push_back(TensorView{prefix + ".weight", out, in, false, total_});
  total_ += tensors_.back().size();
  layer.b_offset = total_;
  tensors_.push_back(TensorView{prefix + ".bias", out, 1, true, total_});
  total_ += tensors_.back().size();
  layers_.push_back(layer);
}

const TensorView* ParameterLayout::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<float> initial_parameters(const ParameterLayout& layout, uint64_t seed) {
  std::vector<float> values(layout.total_size());
  const RngKey key = rng_key(seed);
  const auto& tensors = layout.tensors();
  for (size_t id = 0; id < tensors.size(); ++id) {
    const TensorView& t = tensors[id];
    const int fan_in = t.is_bias ? layout.tensors()[id - 1].cols : t.cols;
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    for (size_t i = 0; i < t.size(); ++i) {
      const Philox4 d = philox_draw(key, static_cast<uint32_t>(i >> 2), static_cast<uint32_t>(id),
                                    0, RngStream::Init);
      const float u = uniform_open01(d.v[i & 3]);
      values[t.offset + i] = bound * (2.0f * u - 1.0f);
    }
  }
  return values;
}

Vae::Vae(Backend& backend, const ModelSpec& spec, int max_batch, uint64_t seed)
    : backend_(backend), spec_(spec), layout_(spec), max_batch_(max_batch),
      params_(backend, layout_.total_size()), grads_(backend, layout_.total_size()) {
  ELBO_CHECK(max_batch > 0, "batch size must be positive");
  const size_t B = static_cast<size_t>(max_batch);
  const size_t L = static_cast<size_t>(spec.latent);
  for (const LinearLayer& layer : layout_.layers()) {
    if (&layer == &layout_.layers()[layout_.num_encoder_layers() - 1]) continue;  // the head
    acts_.emplace_back(backend, B * static_cast<size_t>(layer.out));
    dacts_.emplace_back(backend, B * static_cast<size_t>(layer.out));
  }
  head_ = DeviceArray(backend, B * 2 * L);
  dhead_ = DeviceArray(backend, B * 2 * L);
  z_ = DeviceArray(backend, B * L);
  dz_ = DeviceArray(backend, B * L);
  recon_ = DeviceArray(backend, B);
  kl_ = DeviceArray(backend, B);
  const std::vector<float> init = initial_parameters(layout_, seed);
  backend_.upload(params_.data(), init.data(), init.size());
}

// acts_ is indexed by layer with the head skipped: encoder hidden layers first, then the decoder.
static size_t act_index(size_t layer, size_t head) { return layer < head ? layer : layer - 1; }

const float* Vae::layer_input(size_t i, const float* x) const {
  const size_t head = layout_.num_encoder_layers() - 1;
  if (i == 0) return x;
  if (i == head + 1) return z_.data();
  return acts_[act_index(i - 1, head)].data();
}

void Vae::forward(const float* x, const float* eps, int B) { run_forward(x, eps, B, nullptr, 0.0f); }

void Vae::run_forward(const float* x, const float* eps, int B, float* dout, float grad_scale) {
  ELBO_CHECK(B > 0 && B <= max_batch_, "batch larger than the model's workspace");
  const auto& layers = layout_.layers();
  const size_t head = layout_.num_encoder_layers() - 1;
  const float* p = params_.data();
  for (size_t i = 0; i < layers.size(); ++i) {
    const LinearLayer& l = layers[i];
    float* y = i == head ? head_.data() : acts_[act_index(i, head)].data();
    // y[B, out] = in[B, in] W^T, then bias and activation in one pass.
    backend_.gemm(Trans::No, Trans::Yes, B, l.out, l.in, 1.0f, layer_input(i, x), l.in,
                  p + l.w_offset, l.in, 0.0f, y, l.out);
    backend_.bias_activation(y, p + l.b_offset, B, l.out, l.activation);
    if (i == head) backend_.reparameterize(head_.data(), eps, z_.data(), kl_.data(), B, spec_.latent);
  }
  backend_.reconstruction_loss(acts_.back().data(), x, dout, recon_.data(), B, spec_.input_dim,
                               spec_.likelihood, grad_scale);
}

void Vae::forward_backward(const float* x, const float* eps, int B, float beta, float grad_scale) {
  run_forward(x, eps, B, dacts_.back().data(), grad_scale);
  const auto& layers = layout_.layers();
  const size_t head = layout_.num_encoder_layers() - 1;
  const float* p = params_.data();
  float* g = grads_.data();
  for (size_t i = layers.size(); i-- > 0;) {
    const LinearLayer& l = layers[i];
    float* dy = i == head ? dhead_.data() : dacts_[act_index(i, head)].data();
    const float* y = i == head ? head_.data() : acts_[act_index(i, head)].data();
    backend_.activation_backward(dy, y, g + l.b_offset, B, l.out, l.activation);
    // dW[out, in] = dy^T[out, B] in[B, in]
    backend_.gemm(Trans::Yes, Trans::No, l.out, l.in, B, 1.0f, dy, l.out, layer_input(i, x), l.in,
                  0.0f, g + l.w_offset, l.in);
    if (i == 0) break;  // no gradient with respect to the data
    // d(in)[B, in] = dy[B, out] W[out, in]
    float* din = i == head + 1 ? dz_.data() : dacts_[act_index(i - 1, head)].data();
    backend_.gemm(Trans::No, Trans::No, B, l.in, l.out, 1.0f, dy, l.out, p + l.w_offset, l.in, 0.0f,
                  din, l.in);
    if (i == head + 1)
      backend_.reparameterize_backward(head_.data(), eps, dz_.data(), dhead_.data(), B, spec_.latent,
                                       beta * grad_scale);
  }
}

void Vae::decode(const float* z, int B) {
  ELBO_CHECK(B > 0 && B <= max_batch_, "batch larger than the model's workspace");
  const auto& layers = layout_.layers();
  const size_t head = layout_.num_encoder_layers() - 1;
  const float* p = params_.data();
  for (size_t i = head + 1; i < layers.size(); ++i) {
    const LinearLayer& l = layers[i];
    const float* in = i == head + 1 ? z : acts_[act_index(i - 1, head)].data();
    float* y = acts_[act_index(i, head)].data();
    backend_.gemm(Trans::No, Trans::Yes, B, l.out, l.in, 1.0f, in, l.in, p + l.w_offset, l.in,
                  0.0f, y, l.out);
    backend_.bias_activation(y, p + l.b_offset, B, l.out, l.activation);
  }
}

LossSums Vae::loss_sums(int B) {
  const size_t n = static_cast<size_t>(B);
  return LossSums{backend_.sum(recon_.data(), n), backend_.sum(kl_.data(), n)};
}

}  // namespace elbo
