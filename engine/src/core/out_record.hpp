// One outbound ring record as the core emits it.
#pragma once

#include <cstdint>
#include <vector>

namespace dgdo {

// type from enum dgdo_event_type, body the events.h struct (or its used prefix).
struct OutRecord {
    int32_t type;
    std::vector<uint8_t> body;
};

}  // namespace dgdo
