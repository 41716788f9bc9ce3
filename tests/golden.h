// Reading the golden cases of ../shared/golden (vae_golden_v2.h5, written by PyTorch in float64):
// a case's model, and its parameters in our flat layout. Shared by the tests that replay them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/model.h"
#include "io/hdf5.h"

namespace elbo {

// The model of the case in group g (ending in '/').
inline ModelSpec golden_spec(const h5::File& f, const std::string& g) {
  ModelSpec spec;
  spec.latent = static_cast<int>(f.read_int_attribute(g, "latent"));
  for (double w : f.read_double_array_attribute(g, "encoder")) spec.encoder.push_back(static_cast<int>(w));
  for (double w : f.read_double_array_attribute(g, "decoder")) spec.decoder.push_back(static_cast<int>(w));
  spec.activation = f.read_string_attribute(g, "activation") == "tanh" ? Activation::Tanh : Activation::Relu;
  const std::string lik = f.read_string_attribute(g, "likelihood");
  spec.likelihood = lik == "gaussian"           ? Likelihood::Gaussian
                    : lik == "gaussian_learned" ? Likelihood::GaussianLearned
                                                : Likelihood::Bernoulli;
  if (f.has_attribute(g, "model") && f.read_string_attribute(g, "model") == "conv") {
    spec.type = ModelType::Conv;
    const std::vector<double> shape = f.read_double_array_attribute(g, "shape");
    spec.channels = static_cast<int>(shape.at(0));
    spec.height = static_cast<int>(shape.at(1));
    spec.width = static_cast<int>(shape.at(2));
    spec.input_dim = spec.channels * spec.height * spec.width;
    spec.conv.channels.clear();
    for (double c : f.read_double_array_attribute(g, "channels"))
      spec.conv.channels.push_back(static_cast<int>(c));
    spec.conv.kernel = static_cast<int>(f.read_int_attribute(g, "kernel"));
    spec.conv.stride = static_cast<int>(f.read_int_attribute(g, "stride"));
    spec.conv.padding = static_cast<int>(f.read_int_attribute(g, "padding"));
  } else {
    spec.input_dim = static_cast<int>(f.read_int_attribute(g, "D"));
  }
  return spec;
}

// Every tensor of the layout from g + "params/<name>", at its offset; throws on a size mismatch.
inline std::vector<float> golden_params(const h5::File& f, const std::string& g,
                                        const ParameterLayout& layout) {
  std::vector<float> p(layout.total_size());
  for (const TensorView& t : layout.tensors()) {
    const h5::FloatArray a = f.read_floats(g + "params/" + t.name);
    if (a.data.size() != t.size())
      throw std::runtime_error("golden tensor " + t.name + " has " +
                               std::to_string(a.data.size()) + " values, the layout " +
                               std::to_string(t.size()));
    std::copy(a.data.begin(), a.data.end(), p.begin() + static_cast<std::ptrdiff_t>(t.offset));
  }
  return p;
}

}  // namespace elbo
