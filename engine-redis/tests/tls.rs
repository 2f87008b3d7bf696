//! TLS and authentication against a real `redis-server`: a TLS-only server with a throwaway
//! certificate and a password is reached with `rediss://`, and a wrong password is a typed
//! error that never shows the password.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wait_until;
use engine_redis::testing::{Server, ServerOptions};
use engine_redis::{Error, RedisBroker, StreamAddress, StreamSink, StreamSource};
use engine_threads::{Engine, EngineError};

const PASSWORD: &str = "correct-horse-battery";

fn secure_server() -> Server {
    Server::start_with(ServerOptions::new().tls(true).password(PASSWORD)).unwrap()
}

/// `address` with the password `password` (or none) instead of its own.
fn with_password(server: &Server, password: Option<&str>) -> StreamAddress {
    let auth = password.map_or_else(String::new, |p| format!(":{p}@"));
    let ca = server.ca_file().expect("a TLS server");
    StreamAddress::parse(&format!(
        "rediss://{auth}127.0.0.1:{}/secure?ca={}",
        server.port(),
        ca.display()
    ))
    .unwrap()
}

#[test]
fn a_tls_server_with_a_password_is_reached_with_rediss() {
    let _heavy = common::heavy();
    let server = secure_server();
    let address = server.address("secure").unwrap();
    assert!(address.is_tls());
    assert_eq!(
        address.server(),
        format!("rediss://127.0.0.1:{}", server.port())
    );
    let report = Engine::builder(0..200_u64)
        .backend(StreamSink::<u64>::new(address.clone()))
        .run()
        .unwrap();
    assert_eq!(report.processed(), 200);

    let source = StreamSource::<u64>::new(address);
    let settlement = source.settlement();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let seen = Arc::clone(&seen);
        Engine::builder(source)
            .backend(move |n: u64| seen.lock().unwrap().push(n))
            .spawn()
            .unwrap()
    };
    wait_until(
        "every item is read over TLS",
        Duration::from_secs(60),
        || seen.lock().unwrap().len() >= 200,
    );
    handle.stop();
    handle.join().unwrap();
    assert_eq!(settlement.outstanding(), 0);
    assert_eq!(*seen.lock().unwrap(), (0..200).collect::<Vec<_>>());
    let mut conn = server.connection().unwrap();
    assert_eq!(common::len(&mut conn, "secure"), 0);

    // Without TLS, or without the CA, the server cannot be reached.
    let plain = StreamAddress::parse(&format!(
        "redis://:{PASSWORD}@127.0.0.1:{}/secure",
        server.port()
    ))
    .unwrap()
    .with_timeouts(Duration::from_secs(2), Duration::from_secs(1));
    let err = RedisBroker::connect(&plain).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let untrusted = StreamAddress::parse(&format!(
        "rediss://:{PASSWORD}@127.0.0.1:{}/secure",
        server.port()
    ))
    .unwrap();
    let err = RedisBroker::connect(&untrusted).unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
}

#[test]
fn a_wrong_password_is_a_typed_error_that_never_shows_the_password() {
    let _heavy = common::heavy();
    let server = secure_server();
    let wrong = "wrong-password-123";
    for address in [
        with_password(&server, Some(wrong)),
        with_password(&server, None),
    ] {
        let err = RedisBroker::connect(&address).unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
        assert!(!err.is_retryable());
        let mut shown = format!("{err} {err:?} {address} {address:?} {}", address.as_str());
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            shown.push_str(&format!(" {cause} {cause:?}"));
            source = cause.source();
        }
        assert!(shown.contains("refused the credentials"), "{shown}");
        assert!(
            !shown.contains(wrong) && !shown.contains(PASSWORD),
            "{shown}"
        );

        // Through an engine, the sink's setup fails with it at once.
        let err = Engine::builder(0..3_u64)
            .backend(StreamSink::<u64>::new(address))
            .run()
            .unwrap_err();
        let EngineError::StageFailed { error, .. } = &err else {
            panic!("expected a stage failure, got {err:?}");
        };
        assert!(
            matches!(
                error.downcast_ref::<Error>(),
                Some(Error::Unauthorized { .. })
            ),
            "{err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(wrong) && !shown.contains(PASSWORD),
            "{shown}"
        );
    }
    // The right password works.
    RedisBroker::connect(&with_password(&server, Some(PASSWORD))).unwrap();
}
