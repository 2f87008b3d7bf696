//! Shared memory regions for large bodies, filled again once their receiver is done.
//!
//! A fresh `IpcSharedMemory` per body costs a memfd, a mapping and a zeroing page fault per
//! 4 KiB on the sending side: about 800 µs per MiB, which caps a stream of 1 MiB bodies near
//! 1.2 GB/s. So a sending process keeps the regions it made and fills a free one again.
//!
//! A region is [`HEADER`] bytes of header, then room for a body. The header's first four
//! bytes are a flag: 1 from the moment a sender fills the region until its receiver has copied
//! the body out, 0 after. The flag is the only part both processes touch while the region is
//! shared, and only through atomics; the body is written only while the flag is 0 in the
//! sender's eyes and read only while it is 1.
//!
//! A process keeps at most [`KEPT_REGIONS`] regions and [`KEPT_BYTES`] in all. When every
//! kept region is still being read (a receiver that is behind, or one that died with the
//! body unread), a body gets a region of its own, as before: a slow or dead receiver costs
//! speed, never correctness.

use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use engine_core::plumbing::lock;
use engine_core::protocol::ProtocolError;
use ipc_channel::ipc::IpcSharedMemory;

/// Bytes before the body: the flag, padded to a cache line.
const HEADER: usize = 64;
/// At most this many regions are kept per process.
const KEPT_REGIONS: usize = 8;
/// At most this many bytes of regions are kept per process.
const KEPT_BYTES: usize = 64 << 20;

/// A region this process made and keeps.
struct Region {
    shm: IpcSharedMemory,
    /// The start of `shm`'s mapping (page aligned): the flag, then the body.
    base: NonNull<u8>,
    /// Room for a body.
    room: usize,
}

// SAFETY: `base` points into the mapping `shm` owns, which lives as long as the `Region`
// and does not move with it; it is written only by the thread that set the flag (the lease
// holder), and the flag itself only through atomics.
unsafe impl Send for Region {}

impl Region {
    fn new(room: usize) -> Self {
        let mut shm = IpcSharedMemory::from_byte(0, HEADER + room);
        // SAFETY: nobody else maps this region yet; from now on its bytes are written only
        // through `base`, by the holder of the flag.
        let base = NonNull::from(unsafe { shm.deref_mut() }).cast::<u8>();
        Self { shm, base, room }
    }

    fn flag(&self) -> &AtomicU32 {
        flag_at(self.base)
    }
}

/// The flag at the start of a mapping.
fn flag_at<'a>(base: NonNull<u8>) -> &'a AtomicU32 {
    // SAFETY: mappings start at a page boundary, so the flag is aligned, and it lies within
    // the mapping (HEADER bytes at least); both processes touch it only atomically.
    unsafe { AtomicU32::from_ptr(base.as_ptr().cast()) }
}

/// Copies `body` after the header at `base`.
///
/// # Safety
/// `base` starts a mapping with room for `body` after the header, whose flag the caller set.
unsafe fn fill(base: NonNull<u8>, body: &[u8]) {
    // SAFETY: the caller's promise; nobody reads the body while the caller holds the flag.
    unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), base.as_ptr().add(HEADER), body.len()) }
}

/// The regions a process keeps.
struct Kept(Mutex<Vec<Region>>);

/// This process's kept regions.
static KEPT: Kept = Kept::new();

/// A kept region filled for one send, until its receiver clears the flag.
pub(crate) struct Lease {
    /// The kept region's mapping, or `None` for a region of its own.
    base: Option<NonNull<u8>>,
}

impl Lease {
    /// Gives the region back when its body will never be read (the send failed).
    pub(crate) fn release(self) {
        if let Some(base) = self.base {
            flag_at(base).store(0, Ordering::Release);
        }
    }
}

/// A region holding `body`, to send; and the lease on it.
pub(crate) fn lease(body: &[u8]) -> (IpcSharedMemory, Lease) {
    KEPT.lease(body)
}

impl Kept {
    const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn lease(&self, body: &[u8]) -> (IpcSharedMemory, Lease) {
        let mut kept = lock(&self.0);
        let free = smallest_free(&kept, body.len());
        let Some(index) = free.or_else(|| make_room(&mut kept, body.len())) else {
            drop(kept);
            let region = Region::new(body.len());
            region.flag().store(1, Ordering::Relaxed);
            // SAFETY: the region is new, with room for the body, and ours.
            unsafe { fill(region.base, body) };
            return (region.shm, Lease { base: None });
        };
        let region = &kept[index];
        region.flag().store(1, Ordering::Relaxed);
        let (base, shm) = (region.base, region.shm.clone());
        drop(kept);
        // SAFETY: the region has room for the body, its flag is ours, and a kept region whose
        // flag is set is never dropped (see `make_room`), so `base` stays mapped.
        unsafe { fill(base, body) };
        (shm, Lease { base: Some(base) })
    }
}

/// The index of the smallest kept region that is free and has room for `len` bytes.
fn smallest_free(kept: &[Region], len: usize) -> Option<usize> {
    kept.iter()
        .enumerate()
        .filter(|(_, r)| r.room >= len && r.flag().load(Ordering::Acquire) == 0)
        .min_by_key(|(_, r)| r.room)
        .map(|(i, _)| i)
}

/// Makes and keeps a region for a body of `len` bytes, dropping free kept ones (smallest
/// first) to stay within the limits; its index, or `None` when it cannot be kept.
fn make_room(kept: &mut Vec<Region>, len: usize) -> Option<usize> {
    let room = len.checked_next_power_of_two()?;
    if room > KEPT_BYTES / 2 {
        return None;
    }
    loop {
        let total: usize = kept.iter().map(|r| HEADER + r.room).sum();
        if kept.len() < KEPT_REGIONS && total + HEADER + room <= KEPT_BYTES {
            break;
        }
        let smallest = smallest_free(kept, 0)?;
        kept.swap_remove(smallest);
    }
    kept.push(Region::new(room));
    Some(kept.len() - 1)
}

/// Copies the body of `len` bytes out of a received region and clears its flag, so that its
/// sender may fill it again.
pub(crate) fn take(mut region: IpcSharedMemory, len: u64) -> Result<Vec<u8>, ProtocolError> {
    // SAFETY: this mapping is this process's alone, and the sender does not write the body
    // until the flag is cleared below.
    let bytes = unsafe { region.deref_mut() };
    if bytes.len() < HEADER || bytes.as_ptr().align_offset(align_of::<AtomicU32>()) != 0 {
        return Err(bad_region(format!("a region of {} bytes", bytes.len())));
    }
    let body = usize::try_from(len)
        .ok()
        .and_then(|len| bytes[HEADER..].get(..len))
        .map(<[u8]>::to_vec);
    let room = bytes.len() - HEADER;
    flag_at(NonNull::from(bytes).cast()).store(0, Ordering::Release);
    body.ok_or_else(|| bad_region(format!("a body of {len} bytes in a region of {room}")))
}

fn bad_region(found: String) -> ProtocolError {
    ProtocolError::UnexpectedFrame {
        expected: "a shared body within its region",
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test leases from a pool of its own: a region freed in one test must not be taken
    // by a test running beside it before the first reads its flag.

    #[test]
    fn a_region_is_filled_again_once_its_body_was_taken() {
        let kept = Kept::new();
        let body = vec![7u8; 100_000];
        let (first, first_lease) = kept.lease(&body);
        assert!(first_lease.base.is_some(), "a region of 128 KiB is kept");
        let (second, second_lease) = kept.lease(&body);
        assert_ne!(
            first_lease.base, second_lease.base,
            "a busy region is not lent twice"
        );
        assert_eq!(take(first, body.len() as u64).unwrap(), body);
        // The first region is free again: the next body goes there.
        let other = vec![9u8; 90_000];
        let (third, lease) = kept.lease(&other);
        assert!(lease.base.is_some());
        assert_eq!(take(third, other.len() as u64).unwrap(), other);
        assert_eq!(take(second, body.len() as u64).unwrap(), body);
    }

    #[test]
    fn a_length_beyond_the_region_is_a_protocol_error_and_frees_the_region() {
        let kept = Kept::new();
        let body = vec![1u8; 70_000];
        let (region, _) = kept.lease(&body);
        let copy = region.clone();
        assert!(take(region, u64::MAX).is_err());
        assert_eq!(
            flag_at(NonNull::from(&copy[..]).cast()).load(Ordering::Acquire),
            0
        );
    }

    #[test]
    fn a_failed_send_gives_the_region_back() {
        let kept = Kept::new();
        let body = vec![3u8; 200_000];
        let (region, lease) = kept.lease(&body);
        assert_eq!(
            flag_at(NonNull::from(&region[..]).cast()).load(Ordering::Acquire),
            1
        );
        lease.release();
        assert_eq!(
            flag_at(NonNull::from(&region[..]).cast()).load(Ordering::Acquire),
            0
        );
    }
}
