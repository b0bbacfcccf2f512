#include "transport/split_topology.h"

#include <algorithm>

namespace fusecomm {

Topology SplitTopology(Comm& global, const std::vector<int>& node_of, int torus_x_setting) {
  Topology topo;
  const int rank = global.rank(), size = global.size();
  const int node_id = node_of[rank];
  topo.local = global.Split(node_id, rank);
  topo.cross = global.Split(topo.local->rank(), rank);
  std::vector<int> ids = node_of;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int id : ids) {
    topo.node_sizes.push_back(static_cast<int>(std::count(node_of.begin(), node_of.end(), id)));
  }
  topo.homogeneous = std::all_of(topo.node_sizes.begin(), topo.node_sizes.end(),
                                 [&](int s) { return s == topo.node_sizes[0]; });
  // Torus rows are FUSECOMM_TORUS_X consecutive ranks, by default the largest node's size
  // (the same on every rank, unlike this rank's own node size when nodes are uneven).
  const int widest_node = *std::max_element(topo.node_sizes.begin(), topo.node_sizes.end());
  topo.torus_x = std::max(1, std::min(size, torus_x_setting > 0 ? torus_x_setting : widest_node));
  topo.torus_row = global.Split(rank / topo.torus_x, rank);
  topo.torus_col = global.Split(rank % topo.torus_x, rank);
  // Columns among full rows only: ranks of a partial last row fold into the row above.
  const int full_rows = size / topo.torus_x;
  topo.torus_col_full = global.Split(rank / topo.torus_x < full_rows ? rank % topo.torus_x : -1, rank);
  return topo;
}

}  // namespace fusecomm
