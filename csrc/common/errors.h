// Exceptions of the core. The bindings map each class to a Python exception type.
#pragma once

#include <stdexcept>
#include <string>

namespace fusecomm {

// Bad arguments from the caller: detected before anything is sent.
class InvalidArgument : public std::invalid_argument {
 public:
  explicit InvalidArgument(const std::string& what) : std::invalid_argument(what) {}
};

// A collective failed: mismatched requests across ranks, a transport error, a peer that left.
// The same message reaches every rank involved.
class CollectiveError : public std::runtime_error {
 public:
  explicit CollectiveError(const std::string& what) : std::runtime_error(what) {}
};

// The engine is not running (before init, after shutdown, or shut down by another rank).
class NotInitialized : public std::runtime_error {
 public:
  explicit NotInitialized(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace fusecomm
