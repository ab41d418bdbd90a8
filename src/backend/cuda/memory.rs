//! A caching device allocator: freed buffers go to a free list keyed by size class and are
//! reused by later allocations of that class, so a training step after the first allocates
//! nothing from the driver.
//!
//! Reuse is safe without events because every launch and copy runs on one ordered stream (see
//! the [`DeviceApi`] contract): work that used a buffer is ordered before work that reuses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::device::{DevPtr, DeviceApi};
use crate::error::Result;

/// Smallest class: also the alignment every kernel can rely on for vector loads.
const MIN_CLASS: usize = 512;
/// Up to this size classes step by `MIN_CLASS`; above, by an eighth of the power of two, so
/// rounding wastes at most 12.5%.
const FINE_LIMIT: usize = 1 << 20;

/// The byte size actually allocated for a request of `bytes`.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    if bytes <= FINE_LIMIT {
        return bytes.div_ceil(MIN_CLASS) * MIN_CLASS;
    }
    let step = (1usize << (usize::BITS - 1 - bytes.leading_zeros())) / 8;
    bytes.div_ceil(step) * step
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<DevPtr>>,
    /// Bytes handed out and not yet returned.
    in_use: usize,
    /// Bytes held from the driver: in use plus cached.
    reserved: usize,
    peak_reserved: usize,
    peak_in_use: usize,
}

/// Memory statistics, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    pub in_use: usize,
    pub reserved: usize,
    pub peak_in_use: usize,
    pub peak_reserved: usize,
}

/// The caching allocator of one device.
pub struct Allocator {
    device: Arc<dyn DeviceApi>,
    pool: Mutex<Pool>,
}

impl Allocator {
    pub fn new(device: Arc<dyn DeviceApi>) -> Arc<Self> {
        Arc::new(Allocator {
            device,
            pool: Mutex::default(),
        })
    }

    /// A buffer of at least `bytes` bytes, contents undefined.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let class = size_class(bytes);
        let cached = {
            let mut pool = self.pool.lock().expect("allocator poisoned");
            let ptr = pool.free.get_mut(&class).and_then(Vec::pop);
            if ptr.is_some() {
                pool.in_use += class;
                pool.peak_in_use = pool.peak_in_use.max(pool.in_use);
            }
            ptr
        };
        let ptr = match cached {
            Some(ptr) => ptr,
            None => {
                // On failure, give the cache back to the driver and try once more.
                let ptr = match self.device.alloc(class) {
                    Ok(ptr) => ptr,
                    Err(_) => {
                        self.release_cached()?;
                        self.device.alloc(class)?
                    }
                };
                let mut pool = self.pool.lock().expect("allocator poisoned");
                pool.in_use += class;
                pool.reserved += class;
                pool.peak_in_use = pool.peak_in_use.max(pool.in_use);
                pool.peak_reserved = pool.peak_reserved.max(pool.reserved);
                ptr
            }
        };
        Ok(DeviceBuffer {
            ptr,
            class,
            allocator: self.clone(),
        })
    }

    /// Frees every cached (unused) buffer back to the driver.
    pub fn release_cached(&self) -> Result<()> {
        let free = std::mem::take(&mut self.pool.lock().expect("allocator poisoned").free);
        self.device.synchronize()?;
        for (class, ptrs) in free {
            for ptr in ptrs {
                self.device.free(ptr)?;
                self.pool.lock().expect("allocator poisoned").reserved -= class;
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> MemoryStats {
        let pool = self.pool.lock().expect("allocator poisoned");
        MemoryStats {
            in_use: pool.in_use,
            reserved: pool.reserved,
            peak_in_use: pool.peak_in_use,
            peak_reserved: pool.peak_reserved,
        }
    }

    fn give_back(&self, ptr: DevPtr, class: usize) {
        let mut pool = self.pool.lock().expect("allocator poisoned");
        pool.in_use -= class;
        pool.free.entry(class).or_default().push(ptr);
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; the context goes away with the device anyway.
        let _ = self.release_cached();
    }
}

/// One device allocation; returns to its allocator's cache on drop.
pub struct DeviceBuffer {
    ptr: DevPtr,
    class: usize,
    allocator: Arc<Allocator>,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }

    /// Usable bytes (the size class, at least what was asked for).
    pub fn bytes(&self) -> usize {
        self.class
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.allocator.give_back(self.ptr, self.class);
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [(1 << 20) + 1, 3_000_000, 123_456_789, 1 << 30] {
            let class = size_class(bytes);
            assert!(
                class >= bytes && (class - bytes) * 8 <= bytes,
                "{bytes} -> {class}"
            );
        }
    }
}
