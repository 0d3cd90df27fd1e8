#include "loop/shm_segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "dgdo/ring.h"

namespace dgdo {

int ShmSegment::create(const std::string& label, uint64_t capacity, uint64_t epoch) {
    destroy();
    const int fd = memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    fd_ = fd;
    label_ = label;
    const size_t size = dgdo_ring_segment_size(capacity);
    if (ftruncate(fd, static_cast<off_t>(size)) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        const int err = -errno;
        destroy();
        return err;
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        const int err = -errno;
        destroy();
        return err;
    }
    base_ = p;
    size_ = size;
    return dgdo_ring_format(base_, capacity, epoch);
}

void ShmSegment::destroy() {
    if (base_) munmap(base_, size_);
    base_ = nullptr;
    size_ = 0;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    label_.clear();
}

}  // namespace dgdo
