//! The names of the keys that go with a stream, each in its stream's hash slot, so that the
//! commands and scripts of one stream (or one partition of a keyed stream) touch one slot,
//! as a Redis Cluster requires.
//!
//! A key that goes with the stream `s` is `{s}:<what>`: Redis hashes only the part in braces
//! (the hash tag), and a stream name without braces hashes as a whole, so `s` and `{s}:dead`
//! share a slot. A stream name that has a hash tag of its own (`orders{eu}`) keeps it:
//! `orders{eu}:dead`. (A name with a `}` and no hash tag, `a}b`, cannot share its slot
//! with any other key; on one server that does not matter.)

use std::borrow::Cow;

use crate::entry_id::EntryId;

/// The hash tag of `stream`, as Redis finds it: the text between the first `{` and the next
/// `}`, if not empty.
fn hash_tag(stream: &str) -> Option<&str> {
    let open = stream.find('{')?;
    let close = stream[open + 1..].find('}')?;
    (close > 0).then(|| &stream[open + 1..open + 1 + close])
}

/// `stream` with a hash tag: itself if it has one, else `{stream}`.
pub(crate) fn tagged(stream: &str) -> Cow<'_, str> {
    match hash_tag(stream) {
        Some(_) => Cow::Borrowed(stream),
        None => Cow::Owned(format!("{{{stream}}}")),
    }
}

/// The key `what` of `stream`, in its hash slot: `{stream}:what`.
pub(crate) fn key_of(stream: &str, what: &str) -> String {
    format!("{}:{what}", tagged(stream))
}

/// The default dead-letter stream of `stream`: `{stream}:dead`.
pub(crate) fn dead_letter_stream(stream: &str) -> String {
    key_of(stream, "dead")
}

/// The key holding the last recorded error of an entry: `{stream}:error:<id>`.
pub(crate) fn error_key(stream: &str, id: EntryId) -> String {
    key_of(stream, &format!("error:{id}"))
}

/// The slot Redis Cluster puts `key` in: CRC16 (XMODEM) of its hash tag, or of the whole
/// key, modulo 16384.
pub(crate) fn slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    let mut crc: u16 = 0;
    for byte in hashed.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{lease_key, partition_stream};

    #[test]
    fn the_slot_is_redis_clusters() {
        // From the Redis Cluster specification: CRC16 of "123456789" is 0x31C3.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_eq!(hash_tag("foo{}{bar}"), None);
        assert_eq!(hash_tag("foo{{bar}}zap"), Some("{bar"));
    }

    #[test]
    fn the_keys_of_a_stream_share_its_slot() {
        for stream in ["in", "jobs:new", "orders{eu}", "a{b"] {
            let id = EntryId::new(5, 1);
            for key in [dead_letter_stream(stream), error_key(stream, id)] {
                assert_eq!(slot(&key), slot(stream), "{key} and {stream}");
            }
            let partition = partition_stream(stream, 3);
            for key in [
                dead_letter_stream(&partition),
                error_key(&partition, id),
                lease_key(&partition, "engine"),
                key_of(&partition, "dedup:src:1"),
            ] {
                assert_eq!(slot(&key), slot(&partition), "{key} and {partition}");
            }
        }
        assert_eq!(dead_letter_stream("in"), "{in}:dead");
        assert_eq!(dead_letter_stream("orders{eu}"), "orders{eu}:dead");
    }
}
