//! Reading the replies of the stream commands (`XREADGROUP`, `XAUTOCLAIM`, `XRANGE`,
//! `XPENDING`) into the broker's types, RESP2 or RESP3, without panicking on a malformed one.

use std::time::Duration;

use redis::Value;

use super::{Fields, PAYLOAD_FIELD, TRACE_FIELD, VERSION_FIELD};
use crate::broker::{Delivery, EntryId, Pending};

/// A reply read, or why it could not be.
type Parsed<T> = std::result::Result<T, String>;

/// Reads the reply of `XREADGROUP` on several streams (nil, or `[[stream, [entry...]]...]`
/// in RESP2, `{stream: [entry...]}` in RESP3), with the index of each stream among `names`.
pub(super) fn parse_read_streams(
    reply: Value,
    names: &[&str],
) -> Parsed<Vec<(usize, Vec<Delivery>)>> {
    let index = |name: &Value| -> Parsed<usize> {
        let name = match name {
            Value::BulkString(bytes) => bytes.as_slice(),
            Value::SimpleString(text) => text.as_bytes(),
            _ => return Err("a stream name is not a string".to_owned()),
        };
        names
            .iter()
            .position(|n| n.as_bytes() == name)
            .ok_or_else(|| "a stream that was not asked for".to_owned())
    };
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                let Value::Array(pair) = stream else {
                    return Err("a stream is not a [name, entries] pair".to_owned());
                };
                let mut pair = pair.into_iter();
                let name = pair.next().ok_or("a stream has no name")?;
                let entries = pair.next().ok_or("a stream has no entries")?;
                out.push((index(&name)?, parse_entries(entries, 1)?));
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (name, entries) in streams {
                out.push((index(&name)?, parse_entries(entries, 1)?));
            }
            Ok(out)
        }
        other => Err(format!("expected a list of streams, got {}", kind(&other))),
    }
}

/// Reads the reply of `XAUTOCLAIM`: `[next, [entry...], [deleted id...]]`.
pub(super) fn parse_autoclaim(reply: Value) -> Parsed<(Option<EntryId>, Vec<Delivery>)> {
    let Value::Array(parts) = reply else {
        return Err(format!("expected an array, got {}", kind(&reply)));
    };
    let mut parts = parts.into_iter();
    let next = parts.next().ok_or("no cursor")?;
    let next = id_of(&next).ok_or("the cursor is not an entry id")?;
    let entries = parts.next().ok_or("no entries")?;
    let deliveries = parse_entries(entries, 1)?;
    Ok(((next != EntryId::ZERO).then_some(next), deliveries))
}

/// Reads the entries of a stream reply: `[[id, [field, value, ...]] ...]`. An entry whose
/// fields are nil (deleted) is skipped; one without the payload field has no payload.
pub(super) fn parse_entries(entries: Value, deliveries: u64) -> Parsed<Vec<Delivery>> {
    let Value::Array(entries) = entries else {
        return Err(format!(
            "expected a list of entries, got {}",
            kind(&entries)
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let (id, fields) = entry_parts(entry)?;
        let (payload, version, trace) = match fields {
            Some(Value::Array(fields)) => payload_of(fields),
            Some(Value::Map(fields)) => payload_of(fields.into_iter().flat_map(|(k, v)| [k, v])),
            Some(Value::Nil) | None => continue,
            Some(other) => return Err(format!("entry fields are {}", kind(&other))),
        };
        out.push(Delivery {
            id,
            payload,
            version,
            trace,
            deliveries,
        });
    }
    Ok(out)
}

/// Reads the reply of `XRANGE`: `[[id, [field, value, ...]] ...]`.
pub(super) fn parse_range(reply: Value) -> Parsed<Vec<(EntryId, Fields)>> {
    let Value::Array(entries) = reply else {
        return Err(format!("expected a list of entries, got {}", kind(&reply)));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let (id, fields) = entry_parts(entry)?;
        let values: Vec<Value> = match fields {
            Some(Value::Array(fields)) => fields,
            Some(Value::Map(fields)) => fields.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err("an entry has no fields".to_owned()),
        };
        let mut fields = Vec::with_capacity(values.len() / 2);
        let mut values = values.into_iter();
        while let (Some(name), Some(value)) = (values.next(), values.next()) {
            let bytes = |value: Value| match value {
                Value::BulkString(bytes) => Some(bytes),
                Value::SimpleString(text) => Some(text.into_bytes()),
                Value::Int(n) => Some(n.to_string().into_bytes()),
                _ => None,
            };
            if let (Some(name), Some(value)) = (bytes(name), bytes(value)) {
                fields.push((String::from_utf8_lossy(&name).into_owned(), value));
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// The id and the fields (if any) of one entry of a stream reply: `[id, fields]`.
fn entry_parts(entry: Value) -> Parsed<(EntryId, Option<Value>)> {
    let Value::Array(entry) = entry else {
        return Err("an entry is not an [id, fields] pair".to_owned());
    };
    let mut entry = entry.into_iter();
    let id = entry
        .next()
        .as_ref()
        .and_then(id_of)
        .ok_or("an entry has no valid id")?;
    Ok((id, entry.next()))
}

/// The payload, version and trace context fields' values among an entry's `field, value`
/// pairs.
fn payload_of(
    fields: impl IntoIterator<Item = Value>,
) -> (Option<Vec<u8>>, Option<String>, Option<String>) {
    let (mut payload, mut version, mut trace) = (None, None, None);
    let mut fields = fields.into_iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        let Value::BulkString(name) = &field else {
            continue;
        };
        if name == PAYLOAD_FIELD.as_bytes() {
            payload = match value {
                Value::BulkString(bytes) => Some(bytes),
                _ => None,
            };
        } else if name == VERSION_FIELD.as_bytes() {
            version = match value {
                Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                Value::Int(n) => Some(n.to_string()),
                _ => None,
            };
        } else if name == TRACE_FIELD.as_bytes() {
            trace = match value {
                Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
                _ => None,
            };
        }
    }
    (payload, version, trace)
}

/// Reads the reply of the extended `XPENDING`: `[[id, consumer, idle, deliveries] ...]`.
pub(super) fn parse_pending(reply: Value) -> Parsed<Vec<Pending>> {
    Ok(parse_pending_owners(reply)?
        .into_iter()
        .map(|(_, pending)| pending)
        .collect())
}

/// Reads the reply of the extended `XPENDING` with the consumer of each row:
/// `[[id, consumer, idle ms, deliveries] ...]`.
pub(super) fn parse_pending_owners(reply: Value) -> Parsed<Vec<(String, Pending)>> {
    let Value::Array(rows) = reply else {
        return Err(format!("expected an array, got {}", kind(&reply)));
    };
    rows.into_iter()
        .map(|row| {
            let Value::Array(row) = row else {
                return Err("a pending row is not an array".to_owned());
            };
            let id = row
                .first()
                .and_then(id_of)
                .ok_or("a pending row has no id")?;
            let consumer = match row.get(1) {
                Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                Some(Value::SimpleString(text)) => text.clone(),
                _ => return Err("a pending row has no consumer".to_owned()),
            };
            let number = |at: usize, what: &str| match row.get(at) {
                Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| format!("a negative {what}")),
                _ => Err(format!("a pending row has no {what}")),
            };
            let pending = Pending {
                id,
                idle: Duration::from_millis(number(2, "idle time")?),
                deliveries: number(3, "delivery count")?,
            };
            Ok((consumer, pending))
        })
        .collect()
}

fn id_of(value: &Value) -> Option<EntryId> {
    match value {
        Value::BulkString(bytes) => EntryId::from_bytes(bytes),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Map(_) => "a map",
        Value::ServerError(_) => "an error",
        _ => "an unexpected value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deliveries of a reply on the one stream `in`.
    fn parse_read(reply: Value) -> Parsed<Vec<Delivery>> {
        let read = parse_read_streams(reply, &["in"])?;
        Ok(read
            .into_iter()
            .flat_map(|(_, deliveries)| deliveries)
            .collect())
    }

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn parses_readgroup_replies() {
        assert_eq!(parse_read(Value::Nil).unwrap(), vec![]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"in"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-2"),
                    Value::Array(vec![bulk(b"d"), bulk(b"\x01x")]),
                ]),
                Value::Array(vec![
                    bulk(b"1-3"),
                    Value::Array(vec![bulk(b"other"), bulk(b"")]),
                ]),
                Value::Array(vec![bulk(b"1-4"), Value::Nil]),
            ]),
        ])]);
        let got = parse_read(reply).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, EntryId::new(1, 2));
        assert_eq!(got[0].payload.as_deref(), Some(&b"\x01x"[..]));
        assert_eq!(got[1].payload, None);
    }

    #[test]
    fn rejects_malformed_replies_without_panicking() {
        for bad in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk(b"in")])]),
            Value::Array(vec![Value::Array(vec![bulk(b"in"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"in"),
                Value::Array(vec![Value::Array(vec![bulk(b"nope"), Value::Nil])]),
            ])]),
        ] {
            assert!(parse_read(bad).is_err());
        }
        assert!(parse_autoclaim(Value::Nil).is_err());
        assert!(parse_pending(Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn parses_autoclaim_and_pending() {
        let reply = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                Value::Array(vec![bulk(b"d"), bulk(b"x")]),
            ])]),
            Value::Array(vec![]),
        ]);
        let (next, got) = parse_autoclaim(reply).unwrap();
        assert_eq!(next, None);
        assert_eq!(got[0].id, EntryId::new(5, 1));
        let pending = Value::Array(vec![Value::Array(vec![
            bulk(b"5-1"),
            bulk(b"me"),
            Value::Int(10),
            Value::Int(4),
        ])]);
        assert_eq!(
            parse_pending(pending).unwrap(),
            vec![Pending {
                id: EntryId::new(5, 1),
                deliveries: 4,
                idle: Duration::from_millis(10)
            }]
        );
    }
}
