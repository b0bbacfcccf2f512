// Byte encoding of specs and responses for the control plane (all ranks run the same build, so
// the encoding is the host's native layout, length-prefixed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/request.h"

namespace fusecomm {

std::vector<char> EncodeSpecs(const std::vector<TensorSpec>& specs);
std::vector<TensorSpec> DecodeSpecs(const char* data, size_t size);
std::vector<char> EncodeResponses(const std::vector<Response>& responses);
std::vector<Response> DecodeResponses(const char* data, size_t size);

}  // namespace fusecomm
