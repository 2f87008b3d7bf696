//! The wire protocol between processes: a worker's handshake, a task request and its reply,
//! and corrupt bytes turned into a typed error instead of a crash.
//!
//! Run with `cargo run --example wire_protocol`. It exits non-zero if any check fails.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use anyhow::{Result, ensure};
use engine::core::protocol::{
    Address, Envelope, Frame, Hello, Kind, PROTOCOL_VERSION, ProtocolError, TaskId,
};

fn main() -> Result<()> {
    // A worker connects and introduces itself; the master checks version and kind.
    let hello = Frame::Hello(Hello::new("resizer", Address::named("resizer-1")));
    let Frame::Hello(received) = Frame::decode(&hello.encode()?)? else {
        anyhow::bail!("expected a handshake");
    };
    received.check("resizer")?;
    println!(
        "handshake ok: {} speaks protocol {PROTOCOL_VERSION}",
        received.name
    );

    // The master sends a task (pymulproc's DO); the worker answers FINISHED with the result.
    let request = Envelope::new(Address::named("resizer-1"), Address::Main, Kind::Do)
        .with_task(TaskId(1))
        .with_body(&(1920_u32, 1080_u32))?;
    let wire = Frame::Message(request).encode()?;
    let Frame::Message(task) = Frame::decode(&wire)? else {
        anyhow::bail!("expected a message");
    };
    let (w, h): (u32, u32) = task.body()?;
    let reply = task.reply(Kind::Finished).with_body(&(w / 2, h / 2))?;
    println!(
        "{} -> {}: {} {:?}",
        reply.sender, reply.receiver, reply.kind, reply.task
    );
    ensure!(reply.body::<(u32, u32)>()? == (960, 540), "wrong result");
    ensure!(reply.task == Some(TaskId(1)), "the reply lost its task id");

    // A user message kind, broadcast to every worker (multipro_lab's message type).
    let note = Envelope::new(Address::Broadcast, Address::Main, Kind::user("reload"));
    ensure!(note.receiver.is_for(&Address::named("resizer-1")));

    // Corrupt input: a typed error, never a panic.
    let mut corrupt = wire.clone();
    corrupt.truncate(wire.len() / 2);
    match Frame::decode(&corrupt) {
        Err(err @ ProtocolError::Decode { .. }) => println!("corrupt frame rejected: {err}"),
        other => anyhow::bail!("a truncated frame must not decode: {other:?}"),
    }

    // A worker from another build is refused at the handshake.
    let mut stale = Hello::new("resizer", Address::named("old"));
    stale.version = PROTOCOL_VERSION + 1;
    ensure!(matches!(
        stale.check("resizer"),
        Err(ProtocolError::VersionMismatch { .. })
    ));
    println!("ok");
    Ok(())
}
