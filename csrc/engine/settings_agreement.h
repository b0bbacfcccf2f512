// Settings every rank of a job must share, compared once at init. A rank with another fusion
// threshold or all-reduce algorithm would split or run buffers differently (a silent
// deadlock); another cache capacity would garble the negotiation's bit vectors. Settings that
// only shape one rank's own behaviour (log level, timeline file, cycle time, stall warning
// time, calibration cache path) may differ and are not compared.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/config.h"
#include "transport/control_channel.h"

namespace fusecomm {

// (environment variable, value as text) of each setting that must agree across ranks.
std::vector<std::pair<std::string, std::string>> SettingsThatMustAgree(const Config& config);

// Collective over `channel`: rank 0 compares every rank's settings. Returns "" when they agree,
// else (the same on every rank) a message naming each differing setting and which ranks have
// which value; init() raises it as a CollectiveError on every rank.
std::string AgreeOnSettings(ControlChannel& channel, const Config& config);

}  // namespace fusecomm
