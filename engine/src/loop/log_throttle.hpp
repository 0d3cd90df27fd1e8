// One kind of log line that a peer can cause as fast as it sends (a record the engine cannot
// decode: a sidecar built from other headers sends nothing else): written at most once per
// interval, the first of each interval as it comes, with the number left out before it, so the
// journal keeps the news without the flood (the sidecar's _QuietLog does the same for picows).
#pragma once

#include <cstdint>

namespace dgdo {

class LogThrottle {
public:
    explicit LogThrottle(uint64_t interval_ns) : interval_ns_(interval_ns) {}

    // Whether to write the line now (time fed in: CLOCK_MONOTONIC ns); when it is, *left_out is
    // how many were left out since the last one written, and the count starts again.
    bool allow(uint64_t now_ns, uint64_t* left_out) {
        if (written_ && now_ns - last_ns_ < interval_ns_) {
            ++left_out_;
            return false;
        }
        *left_out = left_out_;
        left_out_ = 0;
        last_ns_ = now_ns;
        written_ = true;
        return true;
    }

private:
    uint64_t interval_ns_;
    uint64_t last_ns_ = 0;
    uint64_t left_out_ = 0;
    bool written_ = false;
};

}  // namespace dgdo
