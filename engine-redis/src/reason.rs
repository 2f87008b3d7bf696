//! What a dead letter says, in words a reader of `engine dlq list` understands: no Rust type
//! paths (`alloc::string::String`) and no backticks, whatever the decoder said.

use engine_core::protocol::ProtocolError;

/// Why an entry's payload does not decode as the expected item.
pub(crate) fn decode_failed(error: &ProtocolError) -> String {
    match error {
        ProtocolError::Decode { what, len, source } => format!(
            "not a valid {} ({len} bytes): {}",
            readable_type(what),
            plain(&source.to_string())
        ),
        ProtocolError::TrailingBytes { what, extra } => format!(
            "a valid {} followed by {extra} unexpected bytes",
            readable_type(what)
        ),
        other => plain(&other.to_string()),
    }
}

/// Why an entry without an item field is dead.
pub(crate) fn no_payload(field: &str) -> String {
    format!("the entry has no item (no field named {field})")
}

/// Why an entry delivered too often is dead, with the last error recorded for it, if any.
pub(crate) fn delivered_too_often(deliveries: u64, limit: u64, last: Option<&str>) -> String {
    match last {
        Some(error) => {
            format!("delivered {deliveries} times (limit {limit}); last error: {error}")
        }
        None => format!(
            "delivered {deliveries} times (limit {limit}) without being finished; no error was \
             recorded (a consumer stopped or crashed with it)"
        ),
    }
}

/// A Rust type name as a reader says it: paths dropped (`alloc::vec::Vec<u8>` is
/// `Vec<u8>`), and a `String` is a UTF-8 string.
fn readable_type(name: &str) -> String {
    let short = plain(name);
    match short.as_str() {
        "String" | "&str" | "str" => "UTF-8 string".to_owned(),
        _ => short,
    }
}

/// `text` without backticks and with every path `a::b::C` cut to its last part `C`.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("::") {
        let (before, after) = rest.split_at(at);
        // Drop the path segment just before the `::`.
        let keep = before.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_');
        out.push_str(keep);
        rest = &after[2..];
    }
    out.push_str(rest);
    out.replace('`', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every reason must be: no Rust path, no backtick.
    fn assert_plain(reason: &str) {
        assert!(!reason.contains("::") && !reason.contains('`'), "{reason}");
    }

    #[test]
    fn decode_failures_name_the_type_as_a_reader_would() {
        let bad = engine_core::protocol::from_bytes::<String>(&[200, 1, 2, 3, 4]).unwrap_err();
        let reason = decode_failed(&bad);
        assert!(
            reason.starts_with("not a valid UTF-8 string (5 bytes)"),
            "{reason}"
        );
        assert_plain(&reason);
        let mut bytes = engine_core::protocol::to_bytes(&7_u64).unwrap();
        bytes.extend([1, 2]);
        let trailing = engine_core::protocol::from_bytes::<u64>(&bytes).unwrap_err();
        assert_eq!(
            decode_failed(&trailing),
            "a valid u64 followed by 2 unexpected bytes"
        );
        let nested =
            engine_core::protocol::from_bytes::<Vec<(String, Option<u8>)>>(&[9]).unwrap_err();
        let reason = decode_failed(&nested);
        assert!(
            reason.starts_with("not a valid Vec<(String, Option<u8>)>"),
            "{reason}"
        );
        assert_plain(&reason);
    }

    #[test]
    fn every_reason_reads_plainly() {
        for reason in [
            no_payload(crate::PAYLOAD_FIELD),
            delivered_too_often(5, 4, Some("transport: boom")),
            delivered_too_often(5, 4, None),
            plain("cannot decode a `alloc::string::String` from 5 bytes"),
        ] {
            assert_plain(&reason);
        }
        assert_eq!(plain("a `core::option::Option<my::T>`"), "a Option<T>");
    }
}
