//! docs/interface.md's table of job fields lists every field the spec reads:
//! a field added to [`JobSpec`] without its row fails here.

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::JobSpec;

/// The field names serde's derive hands `deserialize_struct`: asked for once,
/// then the deserializing stops with an error.
struct Fields(std::cell::Cell<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fields are known")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for &Fields {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0.set(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let fields = Fields(std::cell::Cell::new(&[]));
    let _ = T::deserialize(&fields);
    fields.0.get()
}

#[test]
fn every_job_field_has_its_row_in_the_interface() {
    let doc = include_str!("../../../docs/interface.md");
    let fields = fields_of::<JobSpec>();
    assert!(fields.len() >= 10, "{fields:?}");
    let missing: Vec<&&str> = fields
        .iter()
        .filter(|field| !doc.contains(&format!("\n| `{field}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "job fields with no row in docs/interface.md: {missing:?}"
    );
}
