//! Reading fixed-width values back: the [`Reader`] deserializer over a byte string.
//!
//! Every read is bounded by the bytes left: a value cut short, a bad tag or variant, or a
//! count the bytes cannot hold is a [`FixedError`], never a panic or a huge allocation.

use serde::Deserializer;
use serde::de::{DeserializeSeed, EnumAccess, IntoDeserializer, SeqAccess, VariantAccess, Visitor};

use super::FixedError;

/// Reads plain values from the front of its bytes.
pub(super) struct Reader<'de>(pub(super) &'de [u8]);

impl Reader<'_> {
    #[inline]
    pub(super) fn take<const N: usize>(&mut self) -> Result<[u8; N], FixedError> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(cut_short(N, self.0.len()));
        };
        self.0 = rest;
        Ok(*head)
    }

    #[inline]
    fn flag(&mut self) -> Result<bool, FixedError> {
        match self.take::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other] => Err(not_a_flag(other)),
        }
    }

    /// A count of values (8 bytes, little-endian), no more than the bytes left: every value
    /// counted takes a byte at least (the writer makes sure), and this bounds the reading
    /// loop and the room made ahead for them.
    pub(super) fn count(&mut self) -> Result<usize, FixedError> {
        let n = u64::from_le_bytes(self.take::<8>()?);
        match usize::try_from(n) {
            Ok(n) if n <= self.0.len() => Ok(n),
            _ => Err(FixedError(format!(
                "{n} values claimed in {} bytes",
                self.0.len()
            ))),
        }
    }
}

// The errors are made out of line, so that the reads the hot loops inline stay small (the
// flag's error made inline kept serde's `Option` impl out of the loop decoding outputs).

#[cold]
fn not_a_flag(byte: u8) -> FixedError {
    FixedError(format!("{byte} is not a flag"))
}

#[cold]
fn not_a_char(code: u32) -> FixedError {
    FixedError(format!("{code:#x} is not a char"))
}

#[cold]
fn cut_short(wanted: usize, left: usize) -> FixedError {
    FixedError(format!(
        "a value cut short: {wanted} bytes wanted, {left} left"
    ))
}

macro_rules! read_le {
    ($($method:ident: $ty:ty => $visit:ident),* $(,)?) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FixedError> {
                visitor.$visit(<$ty>::from_le_bytes(self.take()?))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for &mut Reader<'de> {
    type Error = FixedError;

    read_le! {
        deserialize_i8: i8 => visit_i8, deserialize_i16: i16 => visit_i16,
        deserialize_i32: i32 => visit_i32, deserialize_i64: i64 => visit_i64,
        deserialize_i128: i128 => visit_i128, deserialize_u8: u8 => visit_u8,
        deserialize_u16: u16 => visit_u16, deserialize_u32: u32 => visit_u32,
        deserialize_u64: u64 => visit_u64, deserialize_u128: u128 => visit_u128,
        deserialize_f32: f32 => visit_f32, deserialize_f64: f64 => visit_f64,
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, FixedError> {
        Err(FixedError::not_plain("a value of this type"))
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FixedError> {
        visitor.visit_bool(self.flag()?)
    }

    #[inline]
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FixedError> {
        let code = u32::from_le_bytes(self.take()?);
        match char::from_u32(code) {
            Some(c) => visitor.visit_char(c),
            None => Err(not_a_char(code)),
        }
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FixedError> {
        if self.flag()? {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        visitor.visit_seq(Fields {
            reader: self,
            left: len,
        })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    /// A sequence: its count, then its values.
    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FixedError> {
        let left = self.count()?;
        visitor.visit_seq(Fields { reader: self, left })
    }

    /// An enum: its variant's index (4 bytes, little-endian), then the variant's fields.
    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        str string bytes byte_buf unit unit_struct map identifier ignored_any
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The fields of a tuple or struct, one after the other.
struct Fields<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Fields<'_, 'de> {
    type Error = FixedError;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, FixedError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> EnumAccess<'de> for &mut Reader<'de> {
    type Error = FixedError;
    type Variant = Self;

    #[inline]
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), FixedError> {
        let index = u32::from_le_bytes(self.take()?);
        // An index the enum does not have is the seed's error.
        let variant = seed.deserialize(index.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for &mut Reader<'de> {
    type Error = FixedError;

    #[inline]
    fn unit_variant(self) -> Result<(), FixedError> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, FixedError> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FixedError> {
        self.deserialize_tuple(fields.len(), visitor)
    }
}
