#include "loop/shm_segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "dgdo/ring.h"

namespace dgdo {

int ShmSegment::create(const std::string& name, uint64_t capacity, uint64_t epoch) {
    destroy();
    shm_unlink(name.c_str());  // a leftover of a crashed run: start from zeroed pages
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    name_ = name;
    const size_t size = dgdo_ring_segment_size(capacity);
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
        const int err = -errno;
        close(fd);
        destroy();
        return err;
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int map_err = p == MAP_FAILED ? -errno : 0;
    close(fd);
    if (map_err) {
        destroy();
        return map_err;
    }
    base_ = p;
    size_ = size;
    return dgdo_ring_format(base_, capacity, epoch);
}

void ShmSegment::destroy() {
    if (base_) munmap(base_, size_);
    base_ = nullptr;
    size_ = 0;
    if (!name_.empty()) shm_unlink(name_.c_str());
    name_.clear();
}

}  // namespace dgdo
