// The VAE's parameter layout, initialisation, and forward/backward passes against a Backend.
#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"

namespace elbo {

int output_dim(const ModelSpec& spec) {
  return spec.likelihood == Likelihood::GaussianLearned ? 2 * spec.input_dim : spec.input_dim;
}

namespace {

// The grids of the encoder's convs: sizes[0] is the input image, sizes[i + 1] the output of conv i.
// Empty when one does not fit; `why` then says which and how.
std::vector<std::pair<int, int>> conv_sizes(const ModelSpec& spec, std::string* why) {
  std::vector<std::pair<int, int>> sizes{{spec.height, spec.width}};
  const ConvSpec& c = spec.conv;
  for (size_t i = 0; i < c.channels.size(); ++i) {
    const auto [h, w] = sizes.back();
    const std::string in = std::to_string(h) + "x" + std::to_string(w);
    if (c.kernel > h + 2 * c.padding || c.kernel > w + 2 * c.padding) {
      *why = "encoder.conv." + std::to_string(i) + ": kernel " + std::to_string(c.kernel) +
             " is larger than the padded input " + std::to_string(h + 2 * c.padding) + "x" +
             std::to_string(w + 2 * c.padding) + " (input " + in + ", padding " +
             std::to_string(c.padding) + ")";
      return {};
    }
    sizes.emplace_back((h + 2 * c.padding - c.kernel) / c.stride + 1,
                       (w + 2 * c.padding - c.kernel) / c.stride + 1);
  }
  return sizes;
}

ConvShape conv_shape(const ConvSpec& c, int channels, std::pair<int, int> image,
                     std::pair<int, int> grid) {
  ConvShape g;
  g.channels = channels;
  g.height = image.first;
  g.width = image.second;
  g.kernel = c.kernel;
  g.stride = c.stride;
  g.padding = c.padding;
  g.out_h = grid.first;
  g.out_w = grid.second;
  return g;
}

}  // namespace

std::string conv_geometry_error(const ModelSpec& spec) {
  const ConvSpec& c = spec.conv;
  if (c.channels.empty()) return "a conv model needs at least one entry in channels";
  if (c.kernel < 1 || c.stride < 1 || c.padding < 0)
    return "kernel and stride must be >= 1 and padding >= 0";
  if (spec.channels < 1 || spec.height < 1 || spec.width < 1) return "the input has no pixels";
  std::string why;
  conv_sizes(spec, &why);
  return why;
}

std::vector<int64_t> TensorView::shape() const {
  if (is_bias) return {rows};
  if (kernel > 0) return {rows, cols / (kernel * kernel), kernel, kernel};
  return {rows, cols};
}

ParameterLayout::ParameterLayout(const ModelSpec& spec) {
  ELBO_CHECK(spec.input_dim > 0 && spec.latent > 0, "model needs input and latent sizes");
  const bool conv = spec.type == ModelType::Conv;
  if (conv)
    sample_shape_ = {spec.channels, spec.height, spec.width};
  else
    sample_shape_ = {spec.input_dim};
  std::vector<std::pair<int, int>> sizes;
  int width = spec.input_dim;
  if (conv) {
    ELBO_CHECK(spec.input_dim == spec.channels * spec.height * spec.width,
               "a conv model's input_dim must be C H W");
    ELBO_CHECK(conv_geometry_error(spec).empty(), "conv sizes must be checked before the layout");
    std::string unused;
    sizes = conv_sizes(spec, &unused);
    int in_c = spec.channels;
    for (size_t i = 0; i < spec.conv.channels.size(); ++i) {
      const ConvShape g = conv_shape(spec.conv, in_c, sizes[i], sizes[i + 1]);
      encoder_convs_.push_back(add_conv("encoder.conv." + std::to_string(i), g,
                                        spec.conv.channels[i], false, spec.activation));
      in_c = spec.conv.channels[i];
    }
    width = in_c * sizes.back().first * sizes.back().second;
  }
  for (size_t i = 0; i < spec.encoder.size(); ++i) {
    add_linear("encoder." + std::to_string(i), width, spec.encoder[i], spec.activation);
    width = spec.encoder[i];
  }
  add_linear("encoder.head", width, 2 * spec.latent, Activation::None);
  num_encoder_ = layers_.size();
  const int features = conv ? layers_.front().in : 0;  // the flattened convs
  width = spec.latent;
  for (size_t i = 0; i < spec.decoder.size(); ++i) {
    add_linear("decoder." + std::to_string(i), width, spec.decoder[i], spec.activation);
    width = spec.decoder[i];
  }
  if (!conv) {
    add_linear("decoder.out", width, output_dim(spec), Activation::None);
    return;
  }
  // One more dense layer, to the last conv's C x H x W; then the convs in reverse, transposed.
  add_linear("decoder." + std::to_string(spec.decoder.size()), width, features, spec.activation);
  const size_t n = spec.conv.channels.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t conv_i = n - 1 - i;  // the encoder conv this one mirrors
    const bool last = i + 1 == n;
    const int out_c = last
                          ? (spec.likelihood == Likelihood::GaussianLearned ? 2 : 1) * spec.channels
                          : spec.conv.channels[conv_i - 1];
    const ConvShape g = conv_shape(spec.conv, out_c, sizes[conv_i], sizes[conv_i + 1]);
    decoder_convs_.push_back(add_conv(last ? "decoder.out" : "decoder.deconv." + std::to_string(i),
                                      g, spec.conv.channels[conv_i], true,
                                      last ? Activation::None : spec.activation));
  }
}

ConvLayer ParameterLayout::add_conv(const std::string& prefix, const ConvShape& shape, int maps,
                                    bool transposed, Activation a) {
  ConvLayer layer{shape, maps, transposed, total_, 0, a};
  // Conv2d [maps, C, k, k]; ConvTranspose2d [in = maps, out = C, k, k]: both [maps, C k k].
  tensors_.push_back(
      TensorView{prefix + ".weight", maps, shape.col_rows(), false, total_, shape.kernel});
  total_ += tensors_.back().size();
  layer.b_offset = total_;
  const int bias = transposed ? shape.channels : maps;
  tensors_.push_back(TensorView{prefix + ".bias", bias, 1, true, total_});
  total_ += tensors_.back().size();
  return layer;
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
    const int fan_in =
        t.is_bias ? layout.tensors()[id - 1].cols : t.cols;  // [maps, C k k] for convs
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

Vae::Vae(Backend& backend, const ModelSpec& spec, int max_batch, uint64_t seed,
         ParameterStorage storage)
    : backend_(backend), spec_(spec), layout_(spec), max_batch_(max_batch) {
  ELBO_CHECK(max_batch > 0, "batch size must be positive");
  ELBO_CHECK((storage.params == nullptr) == (storage.grads == nullptr),
             "parameters and gradients are both given or both owned");
  const size_t P = layout_.total_size();
  params_ = storage.params ? DeviceArray::view(storage.params, P) : DeviceArray(backend, P);
  grads_ = storage.grads ? DeviceArray::view(storage.grads, P) : DeviceArray(backend, P);
  const size_t B = static_cast<size_t>(max_batch);
  const size_t L = static_cast<size_t>(spec.latent);
  for (const LinearLayer& layer : layout_.layers()) {
    if (&layer == &layout_.layers()[layout_.num_encoder_layers() - 1]) continue;  // the head
    acts_.emplace_back(backend, B * static_cast<size_t>(layer.out));
    dacts_.emplace_back(backend, B * static_cast<size_t>(layer.out));
  }
  size_t col = 0, maps = 0;
  auto conv_buffers = [&](const std::vector<ConvLayer>& layers, std::vector<DeviceArray>& acts,
                          std::vector<DeviceArray>& dacts) {
    for (const ConvLayer& l : layers) {
      acts.emplace_back(backend, B * l.output_size());
      dacts.emplace_back(backend, B * l.output_size());
      const size_t n = static_cast<size_t>(chunk_samples(l));
      col = std::max(col, n * static_cast<size_t>(l.shape.col_rows()) * l.shape.grid());
      maps = std::max(maps, n * static_cast<size_t>(l.maps) * l.shape.grid());
    }
  };
  conv_buffers(layout_.encoder_convs(), enc_acts_, enc_dacts_);
  conv_buffers(layout_.decoder_convs(), dec_acts_, dec_dacts_);
  col_ = DeviceArray(backend, col);
  maps_ = DeviceArray(backend, maps);
  head_ = DeviceArray(backend, B * 2 * L);
  dhead_ = DeviceArray(backend, B * 2 * L);
  z_ = DeviceArray(backend, B * L);
  dz_ = DeviceArray(backend, B * L);
  recon_ = DeviceArray(backend, B);
  kl_ = DeviceArray(backend, B);
  if (!storage.write_initial) return;
  const std::vector<float> init = initial_parameters(layout_, seed);
  backend_.upload(params_.data(), init.data(), init.size());
}

// acts_ is indexed by layer with the head skipped: encoder hidden layers first, then the decoder.
static size_t act_index(size_t layer, size_t head) { return layer < head ? layer : layer - 1; }

const float* Vae::layer_input(size_t i, const float* x) const {
  const size_t head = layout_.num_encoder_layers() - 1;
  if (i == 0) return enc_acts_.empty() ? x : enc_acts_.back().data();
  if (i == head + 1) return z_.data();
  return acts_[act_index(i - 1, head)].data();
}

const float* Vae::output() const {
  return dec_acts_.empty() ? acts_.back().data() : dec_acts_.back().data();
}

int Vae::chunk_samples(const ConvLayer& l) const {
  const size_t limit = backend_.conv_col_floats();
  const size_t per_sample = static_cast<size_t>(l.shape.col_rows()) * l.shape.grid();
  if (limit == 0) return max_batch_;
  // A grid of 128 or more is wide enough for the GEMMs on its own, and one sample's [maps, grid]
  // is already its NCHW layout: one sample at a time needs no transposes at all.
  if (l.shape.grid() >= 128) return 1;
  return static_cast<int>(
      std::clamp<size_t>(limit / per_sample, 1, static_cast<size_t>(max_batch_)));
}

// Both directions as GEMMs over groups of samples: a group joins the grid in the GEMMs' columns
// ([maps, n grid]), so each group is one GEMM per product instead of one per sample, and the
// group is small enough (Backend::conv_col_floats) for its col and transposes to stay in cache.
// Weight gradients add up over the groups.
void Vae::conv_forward(const ConvLayer& l, const float* in, float* y, int B) {
  const ConvShape& g = l.shape;
  const int K = g.col_rows(), chunk = chunk_samples(l);
  const size_t in_size = l.input_size(), out_size = l.output_size();
  const float* w = params_.data() + l.w_offset;
  const float* bias = params_.data() + l.b_offset;
  for (int b0 = 0; b0 < B; b0 += chunk) {
    const int n = std::min(chunk, B - b0), N = n * g.grid();
    const float* x = in + static_cast<size_t>(b0) * in_size;
    float* out = y + static_cast<size_t>(b0) * out_size;
    // One sample's [maps, grid] is its own layout: no transpose.
    if (!l.transposed) {
      float* maps = n == 1 ? out : maps_.data();
      backend_.im2col(x, col_.data(), n, g);
      // maps[maps, n grid] = W[maps, C k k] col[C k k, n grid]
      backend_.gemm(Trans::No, Trans::No, l.maps, N, K, 1.0f, w, K, col_.data(), N, 0.0f, maps, N);
      if (n > 1) backend_.transpose_outer(maps, out, l.maps, n, g.grid());
      backend_.channel_bias_activation(out, bias, n, l.maps, g.grid(), l.activation);
    } else {
      const float* maps = x;
      if (n > 1) {
        backend_.transpose_outer(x, maps_.data(), n, l.maps, g.grid());
        maps = maps_.data();
      }
      // col[C k k, n grid] = W^T[C k k, maps] maps[maps, n grid]
      backend_.gemm(Trans::Yes, Trans::No, K, N, l.maps, 1.0f, w, K, maps, N, 0.0f, col_.data(), N);
      backend_.col2im(col_.data(), out, n, g);
      backend_.channel_bias_activation(out, bias, n, g.channels, g.image(), l.activation);
    }
  }
}

void Vae::conv_backward(const ConvLayer& l, const float* in, const float* y, float* dy, float* din,
                        int B) {
  const ConvShape& g = l.shape;
  const int K = g.col_rows(), chunk = chunk_samples(l);
  const size_t in_size = l.input_size(), out_size = l.output_size();
  const float* w = params_.data() + l.w_offset;
  float* dw = grads_.data() + l.w_offset;
  float* dbias = grads_.data() + l.b_offset;
  if (!l.transposed)
    backend_.channel_activation_backward(dy, y, dbias, B, l.maps, g.grid(), l.activation);
  else
    backend_.channel_activation_backward(dy, y, dbias, B, g.channels, g.image(), l.activation);
  // The col of the forward pass is rebuilt rather than kept: one small workspace for all layers.
  for (int b0 = 0; b0 < B; b0 += chunk) {
    const int n = std::min(chunk, B - b0), N = n * g.grid();
    const float beta = b0 == 0 ? 0.0f : 1.0f;  // the first group overwrites dW, the rest add
    const float* x = in + static_cast<size_t>(b0) * in_size;
    const float* d = dy + static_cast<size_t>(b0) * out_size;
    float* dx = din ? din + static_cast<size_t>(b0) * in_size : nullptr;
    // As in the forward pass, one sample needs no transposes.
    if (!l.transposed) {
      const float* dmaps = d;
      if (n > 1) {
        backend_.transpose_outer(d, maps_.data(), n, l.maps, g.grid());
        dmaps = maps_.data();
      }
      backend_.im2col(x, col_.data(), n, g);
      // dW[maps, C k k] += dmaps[maps, n grid] col^T
      backend_.gemm(Trans::No, Trans::Yes, l.maps, K, N, 1.0f, dmaps, N, col_.data(), N, beta, dw,
                    K);
      if (!dx) continue;
      // dcol[C k k, n grid] = W^T dmaps, then summed back onto the image
      backend_.gemm(Trans::Yes, Trans::No, K, N, l.maps, 1.0f, w, K, dmaps, N, 0.0f, col_.data(),
                    N);
      backend_.col2im(col_.data(), dx, n, g);
    } else {
      backend_.im2col(d, col_.data(), n, g);
      const float* maps = x;
      if (n > 1) {
        backend_.transpose_outer(x, maps_.data(), n, l.maps, g.grid());
        maps = maps_.data();
      }
      // dW[maps, C k k] += in[maps, n grid] dcol^T
      backend_.gemm(Trans::No, Trans::Yes, l.maps, K, N, 1.0f, maps, N, col_.data(), N, beta, dw,
                    K);
      if (!dx) continue;
      // d(in)[maps, n grid] = W[maps, C k k] dcol
      float* dmaps = n == 1 ? dx : maps_.data();
      backend_.gemm(Trans::No, Trans::No, l.maps, N, K, 1.0f, w, K, col_.data(), N, 0.0f, dmaps, N);
      if (n > 1) backend_.transpose_outer(dmaps, dx, l.maps, n, g.grid());
    }
  }
}

void Vae::forward(const float* x, const float* eps, int B) { run_forward(x, eps, B, false, 0.0f); }

void Vae::resample(const float* x, const float* eps, int B) {
  run_forward(x, eps, B, false, 0.0f, true);
}

void Vae::run_forward(const float* x, const float* eps, int B, bool with_grad, float grad_scale,
                      bool reuse_posterior) {
  ELBO_CHECK(B > 0 && B <= max_batch_, "batch larger than the model's workspace");
  const auto& convs = layout_.encoder_convs();
  const auto& layers = layout_.layers();
  const size_t head = layout_.num_encoder_layers() - 1;
  const float* p = params_.data();
  // y[B, out] = in[B, in] W^T, then bias and activation in one pass.
  auto linear = [&](size_t i) {
    const LinearLayer& l = layers[i];
    float* y = i == head ? head_.data() : acts_[act_index(i, head)].data();
    backend_.gemm(Trans::No, Trans::Yes, B, l.out, l.in, 1.0f, layer_input(i, x), l.in,
                  p + l.w_offset, l.in, 0.0f, y, l.out);
    backend_.bias_activation(y, p + l.b_offset, B, l.out, l.activation);
  };
  if (!reuse_posterior) {
    for (size_t i = 0; i < convs.size(); ++i)
      conv_forward(convs[i], i == 0 ? x : enc_acts_[i - 1].data(), enc_acts_[i].data(), B);
    for (size_t i = 0; i <= head; ++i) linear(i);
  }
  backend_.reparameterize(head_.data(), eps, z_.data(), kl_.data(), B, spec_.latent);
  for (size_t i = head + 1; i < layers.size(); ++i) linear(i);
  const auto& deconvs = layout_.decoder_convs();
  for (size_t i = 0; i < deconvs.size(); ++i)
    conv_forward(deconvs[i], i == 0 ? acts_.back().data() : dec_acts_[i - 1].data(),
                 dec_acts_[i].data(), B);
  float* dfinal = dec_dacts_.empty() ? dacts_.back().data() : dec_dacts_.back().data();
  backend_.reconstruction_loss(output(), x, with_grad ? dfinal : nullptr, recon_.data(), B,
                               spec_.input_dim, spec_.likelihood, grad_scale);
}

void Vae::forward_backward(const float* x, const float* eps, int B, float beta, float grad_scale,
                           const std::function<void()>& after_forward,
                           const std::function<void(size_t)>& grads_ready) {
  run_forward(x, eps, B, true, grad_scale);
  if (after_forward) after_forward();
  // The layout runs from the encoder to the decoder and the backward pass the other way, so once a
  // layer's gradients are written everything from its lowest offset to the end is final.
  const auto ready = [&grads_ready](size_t w_offset, size_t b_offset) {
    if (grads_ready) grads_ready(std::min(w_offset, b_offset));
  };
  const auto& deconvs = layout_.decoder_convs();
  for (size_t i = deconvs.size(); i-- > 0;) {
    conv_backward(deconvs[i], i == 0 ? acts_.back().data() : dec_acts_[i - 1].data(),
                  dec_acts_[i].data(), dec_dacts_[i].data(),
                  i == 0 ? dacts_.back().data() : dec_dacts_[i - 1].data(), B);
    ready(deconvs[i].w_offset, deconvs[i].b_offset);
  }
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
    ready(l.w_offset, l.b_offset);
    if (i == 0 && enc_dacts_.empty()) break;  // no gradient with respect to the data
    // d(in)[B, in] = dy[B, out] W[out, in]
    float* din = i == 0          ? enc_dacts_.back().data()
                 : i == head + 1 ? dz_.data()
                                 : dacts_[act_index(i - 1, head)].data();
    backend_.gemm(Trans::No, Trans::No, B, l.in, l.out, 1.0f, dy, l.out, p + l.w_offset, l.in, 0.0f,
                  din, l.in);
    if (i == head + 1)
      backend_.reparameterize_backward(head_.data(), eps, dz_.data(), dhead_.data(), B, spec_.latent,
                                       beta * grad_scale);
  }
  const auto& convs = layout_.encoder_convs();
  for (size_t i = convs.size(); i-- > 0;) {
    conv_backward(convs[i], i == 0 ? x : enc_acts_[i - 1].data(), enc_acts_[i].data(),
                  enc_dacts_[i].data(), i == 0 ? nullptr : enc_dacts_[i - 1].data(), B);
    ready(convs[i].w_offset, convs[i].b_offset);
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
  const auto& deconvs = layout_.decoder_convs();
  for (size_t i = 0; i < deconvs.size(); ++i)
    conv_forward(deconvs[i], i == 0 ? acts_.back().data() : dec_acts_[i - 1].data(),
                 dec_acts_[i].data(), B);
}

LossSums Vae::loss_sums(int B) {
  const size_t n = static_cast<size_t>(B);
  return LossSums{backend_.sum(recon_.data(), n), backend_.sum(kl_.data(), n)};
}

}  // namespace elbo
