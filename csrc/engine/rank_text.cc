#include "engine/rank_text.h"

#include <algorithm>
#include <sstream>

namespace fusecomm {

std::string RankList(const std::vector<int>& ranks) {
  std::ostringstream out;
  out << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size(); ++i) out << (i ? ", " : "") << ranks[i];
  return out.str();
}

std::string DescribeValuesByRank(const std::vector<std::optional<std::string>>& values,
                                 const std::string& joiner) {
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  for (size_t r = 0; r < values.size(); ++r) {
    if (!values[r]) continue;
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == *values[r]; });
    if (it == groups.end()) groups.push_back({*values[r], {static_cast<int>(r)}});
    else it->second.push_back(static_cast<int>(r));
  }
  std::ostringstream out;
  for (size_t g = 0; g < groups.size(); ++g) {
    out << (g ? "; " : "") << RankList(groups[g].second) << joiner << groups[g].first;
  }
  return out.str();
}

}  // namespace fusecomm
