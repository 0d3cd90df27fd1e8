// CRC-32C (Castagnoli), the checksum of journal records and snapshots.
//
// Chosen over CRC-32 because x86-64 computes it in hardware (SSE4.2 crc32,
// ~8 bytes a cycle): replaying a journal is bound by it. Without SSE4.2 a
// byte-wise table does the same arithmetic. crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dgdo {

// Continues `crc` (0 to start) over n bytes.
uint32_t crc32c(uint32_t crc, const void* data, std::size_t n);

}  // namespace dgdo
