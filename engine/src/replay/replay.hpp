// `dgdo-engine replay`: runs a state directory's snapshot + journal through the core
// offline and prints one order's timeline (or everything in a time window): each input
// that touched it, each output about it to each recipient, and the dispatch decisions
// behind them (candidates with distance and ETA, who could not take it and why).
#pragma once

namespace dgdo {

int replay_main(int argc, char** argv);  // argv[0] is "replay"

}  // namespace dgdo
