//! Property tests of the wire protocol: every frame round-trips, and no byte string, random or
//! mutated from a valid frame, makes decoding panic.

use engine_core::protocol::{
    self, Address, Envelope, FRAME_HEADER_LEN, FRAME_MAGIC, Frame, Hello, Kind, PROTOCOL_VERSION,
    ProtocolError, TaskId,
};
use proptest::prelude::*;

fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        Just(Address::Main),
        Just(Address::Broadcast),
        "[a-z0-9_-]{0,12}".prop_map(Address::Named),
        // Names are any UTF-8, not only ASCII.
        any::<String>().prop_map(Address::Named),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Do),
        Just(Kind::Finished),
        Just(Kind::Failed),
        Just(Kind::Die),
        any::<String>().prop_map(Kind::User),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let envelope = (
        address(),
        address(),
        kind(),
        proptest::option::of(any::<u64>().prop_map(TaskId)),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(receiver, sender, kind, task, body)| {
            let envelope = Envelope::new(receiver, sender, kind).with_raw_body(body);
            match task {
                Some(task) => envelope.with_task(task),
                None => envelope,
            }
        });
    let hello = (any::<u32>(), any::<String>(), address(), any::<u32>()).prop_map(
        |(version, worker_kind, name, pid)| {
            let mut hello = Hello::new(worker_kind, name);
            hello.version = version;
            hello.pid = pid;
            hello
        },
    );
    prop_oneof![
        envelope.prop_map(Frame::Message),
        hello.prop_map(Frame::Hello),
        Just(Frame::Welcome),
        any::<String>().prop_map(|reason| Frame::Reject { reason }),
    ]
}

/// What can be done to a valid frame's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..=255_u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        any::<usize>().prop_map(Mutation::Remove),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len().max(1);
    match mutation {
        Mutation::Truncate(at) => bytes.truncate(at % len),
        Mutation::Flip(at, x) => {
            if let Some(b) = bytes.get_mut(at % len) {
                *b ^= x;
            }
        }
        Mutation::Insert(at, x) => bytes.insert(at % (bytes.len() + 1), *x),
        Mutation::Remove(at) => {
            if !bytes.is_empty() {
                bytes.remove(at % bytes.len());
            }
        }
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let bytes = frame.encode().unwrap();
        prop_assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Whatever the outcome, it is a value or a typed error, never a panic.
        if let Ok(frame) = Frame::decode(&bytes) {
            // Anything accepted is a real frame: it survives its own round trip.
            prop_assert_eq!(Frame::decode(&frame.encode().unwrap()).unwrap(), frame);
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in frame(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = frame.encode().unwrap();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let _ = Frame::decode(&bytes);
        let _ = protocol::from_bytes::<Envelope>(&bytes);
        let _ = protocol::from_bytes::<(String, Vec<u64>, Option<TaskId>)>(&bytes);
    }

    #[test]
    fn every_strict_prefix_is_an_error(frame in frame()) {
        let bytes = frame.encode().unwrap();
        for end in 0..bytes.len() {
            let err = Frame::decode(&bytes[..end]).unwrap_err();
            if end < FRAME_HEADER_LEN {
                prop_assert!(matches!(err, ProtocolError::NotAFrame { .. }), "{err}");
            } else {
                prop_assert!(matches!(err, ProtocolError::Decode { .. }), "{err}");
            }
        }
    }

    #[test]
    fn any_other_version_in_the_header_is_refused(version in any::<u32>(), frame in frame()) {
        let mut bytes = frame.encode().unwrap();
        bytes[FRAME_MAGIC.len()..FRAME_HEADER_LEN].copy_from_slice(&version.to_le_bytes());
        match Frame::decode(&bytes) {
            Ok(decoded) => prop_assert!(version == PROTOCOL_VERSION && decoded == frame),
            Err(ProtocolError::VersionMismatch { theirs, .. }) => prop_assert_eq!(theirs, version),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn handshake_accepts_only_our_version(version in any::<u32>()) {
        let mut hello = Hello::new("pool", Address::named("w"));
        hello.version = version;
        prop_assert_eq!(hello.check("pool").is_ok(), version == PROTOCOL_VERSION);
    }
}

#[test]
fn every_single_byte_flip_of_a_frame_is_handled() {
    let frame = Frame::Message(
        Envelope::new(
            Address::named("worker-3"),
            Address::Main,
            Kind::user("resize"),
        )
        .with_task(TaskId(1 << 40))
        .with_body(&("a body", [1_u32, 2, 3]))
        .unwrap(),
    );
    let bytes = frame.encode().unwrap();
    let mut errors = 0;
    for i in 0..bytes.len() {
        for x in 1..=255_u8 {
            let mut mutated = bytes.clone();
            mutated[i] ^= x;
            if Frame::decode(&mutated).is_err() {
                errors += 1;
            }
        }
    }
    // Most single-byte corruptions of a structured frame are detected.
    assert!(errors > bytes.len() * 255 / 4, "only {errors} errors");
}
