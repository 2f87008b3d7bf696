//! Encoding and decoding of protocol frames, against a hand-written postcard encoding of the
//! same fields as a plain tuple: the cost of the envelope's structure and checks.
//!
//! Run with `cargo xtask bench protocol`.

#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]

mod harness;

use std::hint::black_box;

use engine_core::protocol::{Address, Envelope, Frame, Kind, TaskId};

const OPS: u64 = 200_000;
const ROUNDS: usize = 9;

fn main() {
    let body = vec![7_u8; 64];
    let frame = Frame::Message(
        Envelope::new(Address::named("worker-1"), Address::Main, Kind::Do)
            .with_task(TaskId(12_345))
            .with_raw_body(body.clone()),
    );
    // The same fields as a plain tuple: variant tags as bytes, strings, id and bytes.
    let tuple = (
        1_u8,
        1_u8,
        "worker-1",
        0_u8,
        0_u8,
        Some(12_345_u64),
        serde_bytes::Bytes::new(&body),
    );

    harness::header("protocol: frame with a 64-byte body (frames/s)");

    let (engine, baseline) = harness::compare(
        ROUNDS,
        OPS,
        || harness::repeat(OPS, || black_box(&frame).encode().expect("encodes").len()),
        || {
            harness::repeat(OPS, || {
                postcard::to_stdvec(black_box(&tuple))
                    .expect("encodes")
                    .len()
            })
        },
    );
    harness::row("encode", &engine, &baseline);

    let frame_bytes = frame.encode().expect("encodes");
    let tuple_bytes = postcard::to_stdvec(&tuple).expect("encodes");
    type Tuple = (u8, u8, String, u8, u8, Option<u64>, serde_bytes::ByteBuf);
    let (engine, baseline) = harness::compare(
        ROUNDS,
        OPS,
        || {
            harness::repeat(OPS, || {
                match Frame::decode(black_box(&frame_bytes)).expect("decodes") {
                    Frame::Message(m) => m.body.len(),
                    _ => 0,
                }
            })
        },
        || {
            harness::repeat(OPS, || {
                let t: Tuple = postcard::from_bytes(black_box(&tuple_bytes)).expect("decodes");
                t.6.len()
            })
        },
    );
    harness::row("decode (untrusted bytes, checked)", &engine, &baseline);
}
