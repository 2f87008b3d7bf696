//! How the tasks of a batch and the outputs of a reply travel: as fixed-width values when
//! they are plain (numbers, `bool`, `char`, and options, tuples, structs, enums and
//! sequences of them), in postcard otherwise.
//!
//! Postcard writes integers as varints, byte by byte: for a batch of small tasks, such as a
//! `u64` each, encoding and decoding them was a quarter to a third of the pool's CPU. Plain
//! values are written as their little-endian bytes instead, one after the other, without
//! lengths or tags but an option's flag, an enum's variant index (4 bytes) and a sequence's
//! count (8 bytes), as a raw bincode stream would. A placed stage's task is a whole batch of
//! items (a sequence) and its output a sequence of `ItemOutcome`s (an enum), so plain items
//! travel this way there too, unless one failed (an error carries strings). Whether values
//! are plain is found out by trying: a batch whose
//! values are not all plain goes as a postcard sequence, as before. Both sides are the same
//! binary with the same types, so the layout needs no description but a byte before it.
//!
//! Decoding untrusted bytes never panics: a value cut short, a bad tag, a count the bytes
//! cannot hold or bytes left over are a [`FixedError`].

use std::fmt::{self, Display};
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{self, Impossible, Serialize, SerializeTuple};
use serde::{Deserializer, Serializer};

use read::Reader;

/// The layout byte of items that follow as a postcard sequence.
const POSTCARD: u8 = 0;
/// The layout byte of items that follow as a byte string of fixed-width values.
const FIXED: u8 = 1;

/// The most bytes of values decoding makes room for ahead, before they decoded.
const PREALLOCATE: usize = 1 << 20;

/// Why values are not plain, or bytes do not decode as fixed-width values.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FixedError(String);

impl FixedError {
    fn not_plain(what: &str) -> Self {
        Self(format!("{what} has no fixed-width layout"))
    }
}

impl ser::Error for FixedError {
    fn custom<T: Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl de::Error for FixedError {
    fn custom<T: Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Items as they travel inside a postcard message: their layout byte, then either their
/// fixed-width encoding (as one byte string) when each is plain, or a postcard sequence.
/// The sequence is written in place, so that items that are not plain (such as a placed
/// stage's batches, up to megabytes) are not copied once more for the layout byte.
pub(crate) struct Encoded<I>(pub(crate) I);

impl<'a, T, I> Serialize for Encoded<I>
where
    T: Serialize + 'a,
    I: ExactSizeIterator<Item = &'a T> + Clone,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        match encode_fixed(self.0.clone()) {
            Some(fixed) => {
                tuple.serialize_element(&FIXED)?;
                tuple.serialize_element(serde_bytes::Bytes::new(&fixed))?;
            }
            None => {
                tuple.serialize_element(&POSTCARD)?;
                tuple.serialize_element(&Seq(self.0.clone()))?;
            }
        }
        tuple.end()
    }
}

/// The fixed-width encoding of `items`: their count (8 bytes, little-endian), then the
/// values. `None` if one is not plain.
fn encode_fixed<'a, T: Serialize + 'a>(
    mut items: impl ExactSizeIterator<Item = &'a T>,
) -> Option<Vec<u8>> {
    let n = items.len();
    let mut fixed = Fixed(Vec::new());
    fixed.0.extend_from_slice(&(n as u64).to_le_bytes());
    // The first value says whether the values are plain before room is made for all.
    if let Some(first) = items.next() {
        let start = fixed.0.len();
        first.serialize(&mut fixed).ok()?;
        let each = fixed.0.len() - start;
        // A value of no bytes (a struct without fields, an empty array): every value of its
        // type has none, and the reader bounds the count by the bytes; postcard counts them.
        if each == 0 {
            return None;
        }
        // An estimate (a sequence's values vary in size), bounded like a reader's.
        fixed.0.reserve(each.saturating_mul(n - 1).min(PREALLOCATE));
    }
    for item in items {
        item.serialize(&mut fixed).ok()?;
    }
    Some(fixed.0)
}

/// Decodes values that [`encode_fixed`] encoded.
///
/// # Errors
///
/// [`FixedError`] if the bytes are not such values.
fn decode_fixed<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, FixedError> {
    let mut reader = Reader(bytes);
    let n = reader.count()?;
    // Room made ahead is bounded too, whatever a value's size in memory.
    let mut items = Vec::with_capacity(n.min(PREALLOCATE / size_of::<T>().max(1)));
    for _ in 0..n {
        items.push(T::deserialize(&mut reader)?);
    }
    if !reader.0.is_empty() {
        return Err(FixedError(format!("{} bytes left over", reader.0.len())));
    }
    Ok(items)
}

/// Serde's glue for a `Vec` field that travels as [`Encoded`] items:
/// `#[serde(with = "crate::items")]`.
///
/// # Errors
///
/// The serializer's, if an item cannot be encoded.
pub(crate) fn serialize<T: Serialize, S: Serializer>(
    items: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    Encoded(items.iter()).serialize(serializer)
}

/// Serde's glue for a `Vec` field that travels as [`Encoded`] items (see [`serialize`]).
///
/// # Errors
///
/// The deserializer's, if the items do not decode: a wrong layout byte, or values that are
/// not of the layout.
pub(crate) fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    deserializer.deserialize_tuple(2, ItemsVisitor(PhantomData))
}

/// Reads [`Encoded`] items: the layout byte, then the values in that layout.
struct ItemsVisitor<T>(PhantomData<fn() -> T>);

impl<'de, T: DeserializeOwned> Visitor<'de> for ItemsVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("encoded items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let items = match seq.next_element::<u8>()? {
            Some(FIXED) => seq.next_element_seed(FixedSeed(PhantomData))?,
            Some(POSTCARD) => seq.next_element::<Vec<T>>()?,
            Some(other) => {
                return Err(de::Error::custom(format!("unknown layout {other}")));
            }
            None => return Err(de::Error::invalid_length(0, &self)),
        };
        items.ok_or_else(|| de::Error::invalid_length(1, &self))
    }
}

/// Reads fixed-width values from the byte string that holds them.
struct FixedSeed<T>(PhantomData<fn() -> T>);

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for FixedSeed<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<T: DeserializeOwned> Visitor<'_> for FixedSeed<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fixed-width values")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<T>, E> {
        decode_fixed(bytes).map_err(E::custom)
    }
}

/// Items as a postcard sequence.
struct Seq<I>(I);

impl<'a, T: Serialize + 'a, I: Iterator<Item = &'a T> + Clone> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// Writes plain values as their little-endian bytes; refuses any other.
struct Fixed(Vec<u8>);

macro_rules! write_le {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(
            #[inline]
            fn $method(self, v: $ty) -> Result<(), FixedError> {
                self.0.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
        )*
    };
}

impl<'a> Serializer for &'a mut Fixed {
    type Ok = ();
    type Error = FixedError;
    type SerializeSeq = Counted<'a>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Impossible<(), FixedError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    write_le! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128, serialize_f32: f32, serialize_f64: f64,
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), FixedError> {
        self.0.push(u8::from(v));
        Ok(())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<(), FixedError> {
        self.serialize_u32(u32::from(v))
    }

    fn serialize_str(self, _: &str) -> Result<(), FixedError> {
        Err(FixedError::not_plain("a string"))
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), FixedError> {
        Err(FixedError::not_plain("a byte string"))
    }

    #[inline]
    fn serialize_none(self) -> Result<(), FixedError> {
        self.0.push(0);
        Ok(())
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), FixedError> {
        self.0.push(1);
        value.serialize(self)
    }

    // A value of no bytes would let a short message claim any number of them.
    fn serialize_unit(self) -> Result<(), FixedError> {
        Err(FixedError::not_plain("a unit"))
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), FixedError> {
        Err(FixedError::not_plain("a unit struct"))
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), FixedError> {
        self.serialize_u32(index)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), FixedError> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), FixedError> {
        self.0.extend_from_slice(&index.to_le_bytes());
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Counted<'a>, FixedError> {
        let len = len.ok_or_else(|| FixedError::not_plain("a sequence of unknown length"))?;
        self.0.extend_from_slice(&(len as u64).to_le_bytes());
        Ok(Counted {
            start: self.0.len(),
            fixed: self,
            len,
            written: 0,
        })
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self, FixedError> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, FixedError> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, FixedError> {
        self.0.extend_from_slice(&index.to_le_bytes());
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, FixedError> {
        Err(FixedError::not_plain("a map"))
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, FixedError> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, FixedError> {
        self.0.extend_from_slice(&index.to_le_bytes());
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The fields of a tuple-like value (a tuple, a tuple struct or variant): one after the
/// other, as they are.
macro_rules! fields_in_order {
    ($($trait:ident :: $method:ident),* $(,)?) => {
        $(
            impl ser::$trait for &mut Fixed {
                type Ok = ();
                type Error = FixedError;

                #[inline]
                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FixedError> {
                    value.serialize(&mut **self)
                }

                #[inline]
                fn end(self) -> Result<(), FixedError> {
                    Ok(())
                }
            }
        )*
    };
}

fields_in_order! {
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
}

/// The fields of a struct-like value (a struct or a struct variant): their values one
/// after the other, without names. The reader expects every field: a value that leaves one
/// out is not plain.
macro_rules! named_fields_in_order {
    ($($trait:ident),* $(,)?) => {
        $(
            impl ser::$trait for &mut Fixed {
                type Ok = ();
                type Error = FixedError;

                #[inline]
                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    _: &'static str,
                    value: &T,
                ) -> Result<(), FixedError> {
                    value.serialize(&mut **self)
                }

                fn skip_field(&mut self, _: &'static str) -> Result<(), FixedError> {
                    Err(FixedError::not_plain("a value with a skipped field"))
                }

                #[inline]
                fn end(self) -> Result<(), FixedError> {
                    Ok(())
                }
            }
        )*
    };
}

named_fields_in_order!(SerializeStruct, SerializeStructVariant);

/// A sequence being written: its count went first, its values follow.
pub(crate) struct Counted<'a> {
    fixed: &'a mut Fixed,
    /// The count written ahead.
    len: usize,
    /// Values written so far.
    written: usize,
    /// Where the values began.
    start: usize,
}

impl ser::SerializeSeq for Counted<'_> {
    type Ok = ();
    type Error = FixedError;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FixedError> {
        self.written += 1;
        value.serialize(&mut *self.fixed)
    }

    fn end(self) -> Result<(), FixedError> {
        if self.written != self.len {
            return Err(FixedError(format!(
                "a sequence of {} values that said {}",
                self.written, self.len
            )));
        }
        // Values of no bytes would let a short message claim any number of them (the reader
        // bounds counts by the bytes left).
        if self.len > 0 && self.fixed.0.len() == self.start {
            return Err(FixedError::not_plain("a sequence of values without bytes"));
        }
        Ok(())
    }
}

mod read;

#[cfg(test)]
mod tests;
