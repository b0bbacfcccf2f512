#include "transport/p2p_groups.h"

#include <algorithm>
#include <set>

namespace fusecomm {

P2pGroups::P2pGroups(std::function<void(const std::vector<P2pOp>&)> issue_group)
    : issue_group_(std::move(issue_group)) {}

uint64_t P2pGroups::Add(bool send, void* buffer, size_t bytes, int peer) {
  queued_.push_back({send, buffer, bytes, peer, next_id_});
  return next_id_++;
}

bool P2pGroups::Issued(uint64_t id) const {
  return std::none_of(queued_.begin(), queued_.end(), [id](const P2pOp& op) { return op.id == id; });
}

void P2pGroups::IssueOneGroup(const P2pOp* target_recv) {
  std::vector<P2pOp> group;
  std::set<int> send_peers;
  std::deque<P2pOp> rest;
  bool target_taken = target_recv == nullptr;
  for (const P2pOp& op : queued_) {
    bool take = false;
    if (op.send) {
      take = send_peers.insert(op.peer).second;  // the oldest send to each peer
    } else if (!target_taken && op.peer == target_recv->peer) {
      take = true;  // receives from the target's peer, up to the target, in order
      target_taken = op.id == target_recv->id;
    }
    if (take) {
      group.push_back(op);
    } else {
      rest.push_back(op);
    }
  }
  queued_.swap(rest);
  if (!group.empty()) issue_group_(group);
}

void P2pGroups::Issue(uint64_t id) {
  auto it = std::find_if(queued_.begin(), queued_.end(), [id](const P2pOp& op) { return op.id == id; });
  if (it == queued_.end()) return;
  if (!it->send) {
    const P2pOp target = *it;
    IssueOneGroup(&target);
    return;
  }
  while (!Issued(id)) IssueOneGroup(nullptr);
}

void P2pGroups::IssueAll() {
  // Receives in the order queued, each with its round of sends; then the remaining sends.
  while (true) {
    auto it = std::find_if(queued_.begin(), queued_.end(), [](const P2pOp& op) { return !op.send; });
    if (it == queued_.end()) break;
    const P2pOp target = *it;
    IssueOneGroup(&target);
  }
  while (!queued_.empty()) IssueOneGroup(nullptr);
}

}  // namespace fusecomm
