// How messages name ranks: "rank 3", "ranks 0, 2", and ranks grouped by the value each sent,
// so an error stays one short line on many ranks.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fusecomm {

std::string RankList(const std::vector<int>& ranks);

// values[r] is rank r's value (empty: rank r has none and is left out). Returns
// "ranks 0, 2<joiner>A; rank 1<joiner>B", groups in order of first appearance.
std::string DescribeValuesByRank(const std::vector<std::optional<std::string>>& values,
                                 const std::string& joiner);

}  // namespace fusecomm
