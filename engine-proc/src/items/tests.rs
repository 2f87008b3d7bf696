//! The layouts of items: round trips, the layout chosen, bytes that must not decode.

use engine_core::plumbing::ItemOutcome;
use engine_core::protocol::{from_bytes, to_bytes};
use serde::{Deserialize, Serialize};

use super::*;

/// Items alone, as a message field holds them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: DeserializeOwned"))]
struct Field<T>(#[serde(with = "crate::items")] Vec<T>);

fn encode<T: Serialize>(items: &[T]) -> Vec<u8> {
    to_bytes(&Encoded(items.iter())).unwrap()
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Vec<T>, engine_core::protocol::ProtocolError> {
    from_bytes::<Field<T>>(bytes).map(|field| field.0)
}

/// Round-trips `items` and returns their layout byte.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(items: &[T]) -> u8 {
    let bytes = encode(items);
    assert_eq!(decode::<T>(&bytes).unwrap(), items);
    bytes[0]
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: f64,
    label: Option<char>,
    wrapped: Id,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Id(u16);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Nothing {}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sparse {
    a: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<u64>,
}

#[test]
fn plain_values_travel_fixed_width_and_round_trip() {
    assert_eq!(round_trip(&[0_u64, 1, u64::MAX, 1 << 40]), FIXED);
    assert_eq!(round_trip(&[Some(3_u64), None, Some(u64::MAX)]), FIXED);
    assert_eq!(round_trip(&[i8::MIN, -1, 0, i8::MAX]), FIXED);
    assert_eq!(
        round_trip(&[(true, 'é', -2.5_f32), (false, 'a', 0.0)]),
        FIXED
    );
    assert_eq!(round_trip(&[u128::MAX, 7]), FIXED);
    assert_eq!(round_trip(&[i128::MIN, 7]), FIXED);
    let points = [
        Point {
            x: -4,
            y: 1.5,
            label: Some('p'),
            wrapped: Id(9),
        },
        Point {
            x: 8,
            y: -0.25,
            label: None,
            wrapped: Id(u16::MAX),
        },
    ];
    assert_eq!(round_trip(&points), FIXED);
    assert_eq!(round_trip::<u64>(&[]), FIXED);
    // A u64 is its 8 bytes, after the layout byte, the byte string's length and the count.
    assert_eq!(encode(&[5_u64, 6]).len(), 1 + 1 + 8 + 2 * 8);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Dot,
    Circle(f64),
    Rect(u32, u32),
    Poly {
        corners: Vec<(i16, i16)>,
        closed: bool,
    },
    Named(String),
}

#[test]
fn sequences_and_enums_of_plain_values_travel_fixed_width_and_round_trip() {
    // A placed stage's batch: one task of many items, one output of many outcomes.
    assert_eq!(round_trip(&[vec![1_u64, 2, u64::MAX], vec![]]), FIXED);
    assert_eq!(round_trip(&[vec![vec![Some(1_u8)], vec![None]]]), FIXED);
    assert_eq!(round_trip(&[Ok::<u64, i8>(1), Err(-2)]), FIXED);
    let shapes = [
        Shape::Dot,
        Shape::Circle(0.5),
        Shape::Rect(3, 4),
        Shape::Poly {
            corners: vec![(0, 0), (-1, 7)],
            closed: true,
        },
        Shape::Poly {
            corners: vec![],
            closed: false,
        },
    ];
    assert_eq!(round_trip(&shapes), FIXED);
    let outcomes: Vec<ItemOutcome<u64>> = vec![
        ItemOutcome::Done(7),
        ItemOutcome::Many(vec![1, 2]),
        ItemOutcome::Filtered,
        ItemOutcome::Dropped,
    ];
    let bytes = encode(&[outcomes]);
    assert_eq!(bytes[0], FIXED);
    let back = decode::<Vec<ItemOutcome<u64>>>(&bytes).unwrap();
    assert!(matches!(
        back[0][..],
        [
            ItemOutcome::Done(7),
            ItemOutcome::Many(ref many),
            ItemOutcome::Filtered,
            ItemOutcome::Dropped
        ] if many == &[1, 2]
    ));
    // A failure carries an error's strings: that batch goes in postcard, whole.
    let failed = vec![
        ItemOutcome::Done(1_u64),
        ItemOutcome::Failed(engine_core::StageError::msg("no")),
    ];
    let bytes = encode(&[failed]);
    assert_eq!(bytes[0], POSTCARD);
    let back = decode::<Vec<ItemOutcome<u64>>>(&bytes).unwrap();
    assert!(matches!(
        back[0][..],
        [ItemOutcome::Done(1), ItemOutcome::Failed(_)]
    ));
    // A u64 in a sequence: the sequence's count, then its 8 bytes each.
    assert_eq!(encode(&[vec![5_u64, 6]]).len(), 1 + 1 + 8 + 8 + 2 * 8);
}

#[test]
fn other_values_travel_in_postcard_and_round_trip() {
    assert_eq!(round_trip(&["a".to_owned(), String::new()]), POSTCARD);
    assert_eq!(round_trip(&[(), ()]), POSTCARD);
    // Values of no bytes at fixed width: postcard counts them, also inside a sequence.
    assert_eq!(round_trip(&[Nothing {}, Nothing {}]), POSTCARD);
    assert_eq!(round_trip(&[[0_u64; 0], [0_u64; 0]]), POSTCARD);
    assert_eq!(round_trip(&[vec![Nothing {}, Nothing {}]]), POSTCARD);
    // A variant that carries a string, a map.
    assert_eq!(
        round_trip(&[Shape::Dot, Shape::Named("x".to_owned())]),
        POSTCARD
    );
    let map = std::collections::BTreeMap::from([(1_u8, 2_u8)]);
    assert_eq!(round_trip(&[map]), POSTCARD);
    // Plain only while the strings are absent: found out by trying the whole batch.
    assert_eq!(round_trip(&[None, None, Some("late".to_owned())]), POSTCARD);
    assert_eq!(round_trip::<Option<String>>(&[None, None]), FIXED);
    // A skipped field would shift every value after it (postcard cannot read it back
    // either, but that is postcard's to say).
    let sparse = [Sparse { a: 1, b: Some(2) }, Sparse { a: 3, b: None }];
    assert_eq!(encode(&sparse)[0], POSTCARD);
}

#[test]
fn bytes_cut_short_or_left_over_are_errors() {
    let bytes = encode(&[Some(1_u64), None, Some(3)]);
    for end in 0..bytes.len() {
        assert!(decode::<Option<u64>>(&bytes[..end]).is_err(), "{end} bytes");
    }
    // One byte more inside the byte string of values.
    let mut longer = bytes.clone();
    longer[1] += 1;
    longer.push(0);
    assert!(decode::<Option<u64>>(&longer).is_err());
    let error = decode_fixed::<u8>(&fixed(1, &[1, 2])).unwrap_err();
    assert!(error.to_string().contains("left over"), "{error}");
    let strings = encode(&["a".to_owned()]);
    for end in 0..strings.len() {
        assert!(decode::<String>(&strings[..end]).is_err(), "{end} bytes");
    }
}

/// The fixed-width values `values` behind the count `count`.
fn fixed(count: u64, values: &[u8]) -> Vec<u8> {
    let mut bytes = count.to_le_bytes().to_vec();
    bytes.extend_from_slice(values);
    bytes
}

#[test]
fn corrupt_bytes_are_errors() {
    // A bad option tag, a bad bool, a code point that is no char.
    let error = decode_fixed::<Option<u8>>(&fixed(1, &[2, 0])).unwrap_err();
    assert_eq!(error.to_string(), "2 is not a flag");
    let error = decode_fixed::<bool>(&fixed(1, &[7])).unwrap_err();
    assert_eq!(error.to_string(), "7 is not a flag");
    let error = decode_fixed::<char>(&fixed(1, &0xD800_u32.to_le_bytes())).unwrap_err();
    assert_eq!(error.to_string(), "0xd800 is not a char");
    // A count the bytes cannot hold, however large.
    for count in [2, u64::MAX, 1 << 62] {
        let error = decode_fixed::<u8>(&fixed(count, &[1])).unwrap_err();
        assert!(error.to_string().contains("claimed"), "{error}");
    }
    // Values of types without a fixed-width layout.
    assert!(decode_fixed::<String>(&fixed(1, &[1, b'a'])).is_err());
    assert!(decode_fixed::<()>(&fixed(1, &[0])).is_err());
    // A sequence whose count its bytes cannot hold; one cut short; a variant index the enum
    // does not have.
    let mut claims = fixed(1, &u64::MAX.to_le_bytes());
    claims.push(1);
    let error = decode_fixed::<Vec<u8>>(&claims).unwrap_err();
    assert!(error.to_string().contains("claimed"), "{error}");
    let mut short = fixed(1, &3_u64.to_le_bytes());
    short.extend_from_slice(&[1, 2]);
    assert!(decode_fixed::<Vec<u8>>(&short).is_err());
    assert!(decode_fixed::<Shape>(&fixed(1, &9_u32.to_le_bytes())).is_err());
    assert!(decode_fixed::<Shape>(&fixed(1, &[1, 0])).is_err());
    // An unknown layout, nothing at all, postcard that is not a sequence of the type.
    assert!(decode::<u8>(&[9, 0]).is_err());
    assert!(decode::<u8>(&[]).is_err());
    assert!(decode::<String>(&[POSTCARD, 1, 1, 0xFF]).is_err());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for len in 0..400 {
        let bytes: Vec<u8> = (0..len % 40)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        let _ = decode_fixed::<Option<u64>>(&bytes);
        let _ = decode_fixed::<Point>(&bytes);
        let _ = decode_fixed::<Shape>(&bytes);
        let _ = decode_fixed::<Vec<Vec<u16>>>(&bytes);
        let _ = decode_fixed::<ItemOutcome<u64>>(&bytes);
        let mut framed = vec![(len % 3) as u8];
        framed.extend_from_slice(&bytes);
        let _ = decode::<Option<u64>>(&framed);
        let _ = decode::<(bool, char)>(&framed);
        let _ = decode::<String>(&framed);
    }
}

#[test]
fn a_field_of_items_round_trips_inside_postcard() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Message {
        before: u64,
        #[serde(with = "crate::items")]
        items: Vec<Option<u64>>,
        after: String,
    }
    let message = Message {
        before: 1,
        items: vec![Some(2), None],
        after: "end".into(),
    };
    let bytes = to_bytes(&message).unwrap();
    assert_eq!(from_bytes::<Message>(&bytes).unwrap(), message);
    // Corrupt items are the message's decoding error.
    let mut corrupt = bytes.clone();
    let at = corrupt.len() - 5;
    corrupt[at] = 9;
    assert!(from_bytes::<Message>(&corrupt).is_err());
}
