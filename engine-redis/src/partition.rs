//! Keyed streams: how an item's key picks one of a stream's partitions, and the names of the
//! partition streams and of the keys that hold their leases.
//!
//! A keyed stream `<stream>` with `P` partitions is `P` streams, `<stream>:p0` to
//! `<stream>:p<P-1>`. An item goes to partition `xxh3_64(key) % P`: XXH3 is specified
//! byte for byte, so every producer, on any machine and in any version, sends a key to the
//! same partition. Consumers of a group share the partitions through leases
//! (`{<stream>:p<i>}:lease:<group>`, in the partition's hash slot) and a member set
//! (`{<stream>}:members:<group>`); see [`KeyedSource`](crate::KeyedSource).

use crate::keys::key_of;

/// The partition of the key `key` among `partitions` (at least 1).
///
/// # Examples
///
/// ```
/// use engine::redis::partition_of;
///
/// let p = partition_of(b"account-17", 8);
/// assert!(p < 8);
/// assert_eq!(p, partition_of(b"account-17", 8)); // Stable: the same key, the same partition.
/// assert_eq!(partition_of(b"anything", 1), 0);
/// ```
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let partitions = u64::from(partitions.max(1));
    u32::try_from(xxhash_rust::xxh3::xxh3_64(key) % partitions)
        .expect("a remainder of a u32 fits in a u32")
}

/// The name of partition `index` of the keyed stream `stream`: `<stream>:p<index>`.
///
/// ```
/// assert_eq!(engine::redis::partition_stream("in", 3), "in:p3");
/// ```
pub fn partition_stream(stream: &str, index: u32) -> String {
    format!("{stream}:p{index}")
}

/// The key holding the lease of the partition stream `partition` for `group`, in its slot.
pub(crate) fn lease_key(partition: &str, group: &str) -> String {
    key_of(partition, &format!("lease:{group}"))
}

/// The sorted set of the live consumers of `group` on the keyed stream `stream`, each scored
/// with the server time (ms) at which it is presumed dead unless it beats again.
pub(crate) fn members_key(stream: &str, group: &str) -> String {
    key_of(stream, &format!("members:{group}"))
}

/// The key recording the partition count of a keyed stream, set by the first producer or
/// consumer, so that a producer and a consumer that disagree find out.
pub(crate) fn partitions_key(stream: &str) -> String {
    key_of(stream, "partitions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_the_partitions() {
        let mut counts = [0_u32; 8];
        for key in 0..8000 {
            counts[partition_of(format!("key-{key}").as_bytes(), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_partition_of_a_key_never_changes() {
        // XXH3-64 of "a" is 0xe6c632b61e964e1f: pinned, since producers and consumers of
        // different builds must agree.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"a"), 0xe6c6_32b6_1e96_4e1f);
        assert_eq!(
            partition_of(b"a", 8),
            (0xe6c6_32b6_1e96_4e1f_u64 % 8) as u32
        );
    }
}
